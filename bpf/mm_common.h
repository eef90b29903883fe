/* Helpers shared by every vmtrace backend: reading mm_struct counters and the task's
 * user registers at offsets taken from the running kernel's BTF.
 *
 * The headers bcc compiles against may belong to another kernel (Debian's generic 6.1
 * tree on a 6.18 host), so no kernel struct is dereferenced by type here: every field is
 * read at a VMT_OFF_* constant that vmtrace/kernel/offsets.py computed from
 * /sys/kernel/btf/vmlinux and passed with -D.
 */
#ifndef VMTRACE_MM_COMMON_H
#define VMTRACE_MM_COMMON_H

#include "vmtrace_events.h"

struct mm_snap {
	u64 total_vm;
	u64 hiwater_vm;
	u64 stack_vm;
};

/* Per traced process (tgid); user space (or an auto-add rule) creates it with mm == 0. */
struct target_state {
	u64 mm;          /* the mm these counters belong to; changes at execve */
	u64 total_vm;    /* last values accounted for (emitted or attributed) */
	u64 hiwater_vm;
	u64 stack_vm;
	u64 peak;        /* max(total_vm, hiwater_vm) ever seen for this mm */
	u64 hwm_sent;    /* VmHWM (pages) in the last HWM record (or at first sight) */
};

/* mm->rss_stat indexes (include/linux/mm_types_task.h) */
#define VMT_MM_FILEPAGES 0
#define VMT_MM_ANONPAGES 1
#define VMT_MM_SHMEMPAGES 3

static __always_inline u64 vmt_read_u64(u64 addr)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

static __always_inline u64 vmt_current_mm(void)
{
	return vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_MM);
}

static __always_inline void vmt_read_mm(u64 mm, struct mm_snap *s)
{
	s->total_vm = vmt_read_u64(mm + VMT_OFF_MM_TOTAL_VM);
	s->hiwater_vm = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_VM);
	s->stack_vm = vmt_read_u64(mm + VMT_OFF_MM_STACK_VM);
}

static __always_inline s64 vmt_rss_counter(u64 mm, int member)
{
	u64 at = mm + VMT_OFF_MM_RSS_STAT + member * VMT_OFF_RSS_STRIDE + VMT_OFF_RSS_COUNT;
	return (s64)vmt_read_u64(at);
}

/* get_mm_rss() as /proc computes it: each counter's shared value, negatives as 0 */
static __always_inline u64 vmt_read_rss(u64 mm)
{
	s64 file = vmt_rss_counter(mm, VMT_MM_FILEPAGES);
	s64 anon = vmt_rss_counter(mm, VMT_MM_ANONPAGES);
	s64 shmem = vmt_rss_counter(mm, VMT_MM_SHMEMPAGES);
	return (u64)(file > 0 ? file : 0) + (u64)(anon > 0 ? anon : 0) + (u64)(shmem > 0 ? shmem : 0);
}

static __always_inline u64 vmt_max(u64 a, u64 b)
{
	return a > b ? a : b;
}

/* The user-mode registers saved at the top of the task's kernel stack (x86_64
 * task_pt_regs): the syscall number (orig_ax, -1 in a page fault) and arguments of
 * whatever the task is doing, without any syscall tracepoint. */
static __always_inline u64 vmt_user_regs(void)
{
	u64 stack = vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_STACK);
	return stack + VMT_OFF_THREAD_SIZE - VMT_OFF_STACK_TOP_PADDING - VMT_OFF_PT_REGS_SIZE;
}

static __always_inline void vmt_fill_from_regs(struct vmt_event *e)
{
	u64 regs = vmt_user_regs();
	e->syscall_nr = (s32)vmt_read_u64(regs + VMT_OFF_PT_REGS_ORIG_AX);
	e->args[0] = vmt_read_u64(regs + VMT_OFF_PT_REGS_DI);
	e->args[1] = vmt_read_u64(regs + VMT_OFF_PT_REGS_SI);
	e->args[2] = vmt_read_u64(regs + VMT_OFF_PT_REGS_DX);
	e->args[3] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R10);
	e->args[4] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R8);
	e->args[5] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R9);
	e->user_sp = vmt_read_u64(regs + VMT_OFF_PT_REGS_SP);
	e->user_ip = vmt_read_u64(regs + VMT_OFF_PT_REGS_IP);
}

#endif
