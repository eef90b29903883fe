/* Reading the kernel: mm_struct counters, the task's user registers, at offsets taken from
 * the running kernel's BTF.
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
	u64 hiwater_rss;  /* read with the counters (0 in a snapshot made from the state) */
	u64 brk;
};

/* Per traced process (tgid); user space (or an auto-add rule) creates it with mm == 0. */
/* The last free range vm_unmapped_area found during a writer's hold (tracepoint backend):
 * where a new mapping went, since the call has not returned when the change is committed. */
struct vmt_area {
	u64 addr;
	u64 len;
	u32 seen;
	u32 pad;
};

struct target_state {
	u64 mm;            /* the mm these counters belong to; changes at exec */
	u64 total_vm;      /* last values accounted for (sent, or kept back by --min-delta) */
	u64 hiwater_vm;
	u64 stack_vm;
	u64 peak;          /* max(total_vm, hiwater_vm) ever seen for this mm */
	u64 reported_peak; /* --min-delta: total_vm of the last peak sent */
	u64 hwm_sent;      /* VmHWM (pages) in the last HWM record (or at first sight) */
	u64 rss_file;      /* RSS by kind and hiwater_rss at the last change sent, for the exit */
	u64 rss_anon;
	u64 rss_shmem;
	u64 hiwater_rss;
	/* an exec in progress: the old image's values, for the exec record */
	u64 exec_total_vm;
	u64 exec_hiwater_vm;
	u64 exec_stack_vm;
	u64 exec_peak;
	u32 in_exec;
	u32 folded;        /* --min-delta: rises kept back since the last peak sent */
	u32 lost;          /* records of this process dropped for want of ring space */
	u32 tally_run;     /* grow/shrink changes tallied since one was last sent */
	u64 tallied;       /* grow/shrink changes counted instead of sent (reader behind)... */
	u64 tallied_grown; /* ...and the pages they mapped and unmapped */
	u64 tallied_shrunk;
	/* tracepoint backend: the task holding the write lock of `writer_mm` (or the read
	 * lock it downgraded to), 0 if none, and the free range found for its new mapping */
	u32 writer;
	u64 writer_mm;
	struct vmt_area area;
};

/* mm->rss_stat indexes (include/linux/mm_types_task.h) */
#define VMT_MM_FILEPAGES 0
#define VMT_MM_ANONPAGES 1
#define VMT_MM_SHMEMPAGES 3

#define NR_MMAP 9
#define NR_MUNMAP 11
#define NR_BRK 12
#define NR_MREMAP 25
#define NR_SHMAT 30
#define NR_EXECVE 59
#define NR_SHMDT 67
#define NR_EXECVEAT 322

static __always_inline u64 vmt_read_u64(u64 addr)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

static __always_inline u32 vmt_read_u32(u64 addr)
{
	u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

/* Process and thread ids as vmtrace's user space names them: /proc, -p and the records
 * use the numbers of vmtrace's own PID namespace. VMT_PIDNS_INO: vmtrace runs inside a PID
 * namespace (a container), whose nsfs device and inode these are; the kernel's own ids
 * (bpf_get_current_pid_tgid, task->tgid) are the host's. A task outside that namespace's
 * subtree has no number there: 0, never traced. */
#ifdef VMT_PIDNS_INO
/* namespaces nested deeper than this (counting from the host's) are not followed */
#define VMT_PIDNS_MAX_LEVEL 4

static __always_inline u64 vmt_current_ids(void)
{
	struct bpf_pidns_info ns = {};
	if (bpf_get_ns_current_pid_tgid(VMT_PIDNS_DEV, VMT_PIDNS_INO, &ns, sizeof(ns)))
		return 0;
	return (u64)ns.tgid << 32 | ns.pid;
}

/* the current task's process id as user space names it, given its host pid_tgid (so that
 * a caller that needs both makes one helper call on the host) */
static __always_inline u32 vmt_view_tgid(u64 host_ids)
{
	(void)host_ids;
	return vmt_current_ids() >> 32;
}

/* struct pid's number in vmtrace's namespace: its upid whose namespace has that inode.
 * No early exit: a loop of constant trip count is unrolled, which older verifiers need. */
static __always_inline u32 vmt_pid_nr(u64 pid)
{
	if (!pid)
		return 0;
	u32 level = vmt_read_u32(pid + VMT_OFF_PID_LEVEL);
	u32 nr = 0;
#pragma unroll
	for (u32 i = 0; i < VMT_PIDNS_MAX_LEVEL; i++) {
		u64 up = pid + VMT_OFF_PID_NUMBERS + i * VMT_OFF_UPID_SIZE;
		u64 ns = i <= level ? vmt_read_u64(up + VMT_OFF_UPID_NS) : 0;
		if (ns && vmt_read_u32(ns + VMT_OFF_PIDNS_INUM) == VMT_PIDNS_INO)
			nr = vmt_read_u32(up + VMT_OFF_UPID_NR);
	}
	return nr;
}

static __always_inline u32 vmt_task_tid(u64 task)
{
	return vmt_pid_nr(vmt_read_u64(task + VMT_OFF_TASK_THREAD_PID));
}

static __always_inline u32 vmt_task_tgid(u64 task)
{
	return vmt_task_tid(vmt_read_u64(task + VMT_OFF_TASK_GROUP_LEADER));
}
#else
static __always_inline u64 vmt_current_ids(void)
{
	return bpf_get_current_pid_tgid();
}

static __always_inline u32 vmt_view_tgid(u64 host_ids)
{
	return host_ids >> 32;
}

static __always_inline u32 vmt_task_tid(u64 task)
{
	return vmt_read_u32(task + VMT_OFF_TASK_PID);
}

static __always_inline u32 vmt_task_tgid(u64 task)
{
	return vmt_read_u32(task + VMT_OFF_TASK_TGID);
}
#endif

static __always_inline u64 vmt_current_mm(void)
{
	return vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_MM);
}

/* mm_struct keeps hiwater_rss, hiwater_vm, total_vm ... stack_vm ... brk within a few words
 * of each other (read at every lock release of a traced mm): one read when they are, five
 * otherwise. */
#if VMT_OFF_MM_HIWATER_RSS < VMT_OFF_MM_HIWATER_VM && VMT_OFF_MM_HIWATER_VM < VMT_OFF_MM_TOTAL_VM
#if VMT_OFF_MM_TOTAL_VM < VMT_OFF_MM_STACK_VM && VMT_OFF_MM_STACK_VM < VMT_OFF_MM_BRK
#if VMT_OFF_MM_BRK - VMT_OFF_MM_HIWATER_RSS <= 192 && VMT_OFF_MM_HIWATER_RSS % 8 == 0
#if VMT_OFF_MM_HIWATER_VM % 8 == 0 && VMT_OFF_MM_TOTAL_VM % 8 == 0
#if VMT_OFF_MM_STACK_VM % 8 == 0 && VMT_OFF_MM_BRK % 8 == 0
#define VMT_MM_COUNTERS_IN_ONE_READ 1
#endif
#endif
#endif
#endif
#endif

static __always_inline void vmt_read_mm(u64 mm, struct mm_snap *s)
{
#ifdef VMT_MM_COUNTERS_IN_ONE_READ
#define VMT_MM_WORD(off) (((off) - VMT_OFF_MM_HIWATER_RSS) / 8)
	u64 w[VMT_MM_WORD(VMT_OFF_MM_BRK) + 1];
	if (bpf_probe_read_kernel(w, sizeof(w), (void *)(mm + VMT_OFF_MM_HIWATER_RSS)) != 0)
		__builtin_memset(w, 0, sizeof(w));
	s->hiwater_rss = w[0];
	s->hiwater_vm = w[VMT_MM_WORD(VMT_OFF_MM_HIWATER_VM)];
	s->total_vm = w[VMT_MM_WORD(VMT_OFF_MM_TOTAL_VM)];
	s->stack_vm = w[VMT_MM_WORD(VMT_OFF_MM_STACK_VM)];
	s->brk = w[VMT_MM_WORD(VMT_OFF_MM_BRK)];
#undef VMT_MM_WORD
#else
	s->total_vm = vmt_read_u64(mm + VMT_OFF_MM_TOTAL_VM);
	s->hiwater_vm = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_VM);
	s->stack_vm = vmt_read_u64(mm + VMT_OFF_MM_STACK_VM);
	s->hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
	s->brk = vmt_read_u64(mm + VMT_OFF_MM_BRK);
#endif
}

/* RSS by kind, as /proc reads it: each counter's shared value, negative as 0 */
struct mm_rss {
	u64 file;
	u64 anon;
	u64 shmem;
};

/* mm->rss_stat is an array of counters (percpu_counter or atomic_long_t, by kernel): the
 * three that RSS sums are read in one go when they lie within a few words. */
#define VMT_RSS_SPAN (VMT_MM_SHMEMPAGES * VMT_OFF_RSS_STRIDE + 8)
#if VMT_OFF_RSS_STRIDE % 8 == 0 && VMT_OFF_RSS_COUNT % 8 == 0 && VMT_RSS_SPAN <= 128
#define VMT_RSS_IN_ONE_READ 1
#endif

static __always_inline u64 vmt_rss_nonneg(s64 v)
{
	return v > 0 ? (u64)v : 0;
}

static __always_inline void vmt_read_rss_kinds(u64 mm, struct mm_rss *r)
{
	u64 at = mm + VMT_OFF_MM_RSS_STAT + VMT_OFF_RSS_COUNT;
#ifdef VMT_RSS_IN_ONE_READ
#define VMT_RSS_WORD(member) ((member) * VMT_OFF_RSS_STRIDE / 8)
	s64 w[VMT_RSS_SPAN / 8];
	if (bpf_probe_read_kernel(w, sizeof(w), (void *)at) != 0)
		__builtin_memset(w, 0, sizeof(w));
	r->file = vmt_rss_nonneg(w[VMT_RSS_WORD(VMT_MM_FILEPAGES)]);
	r->anon = vmt_rss_nonneg(w[VMT_RSS_WORD(VMT_MM_ANONPAGES)]);
	r->shmem = vmt_rss_nonneg(w[VMT_RSS_WORD(VMT_MM_SHMEMPAGES)]);
#undef VMT_RSS_WORD
#else
	r->file = vmt_rss_nonneg((s64)vmt_read_u64(at + VMT_MM_FILEPAGES * VMT_OFF_RSS_STRIDE));
	r->anon = vmt_rss_nonneg((s64)vmt_read_u64(at + VMT_MM_ANONPAGES * VMT_OFF_RSS_STRIDE));
	r->shmem = vmt_rss_nonneg((s64)vmt_read_u64(at + VMT_MM_SHMEMPAGES * VMT_OFF_RSS_STRIDE));
#endif
}

/* get_mm_rss() as /proc computes it */
static __always_inline u64 vmt_read_rss(u64 mm)
{
	struct mm_rss r = {};
	vmt_read_rss_kinds(mm, &r);
	return r.file + r.anon + r.shmem;
}

static __always_inline u64 vmt_max(u64 a, u64 b)
{
	return a > b ? a : b;
}

/* The user-mode registers of the current task, saved at kernel entry: the syscall number
 * (orig_ax, -1 in a page fault), its arguments, and where the user stack is. */
static __always_inline u64 vmt_user_regs(void)
{
#ifdef VMT_HAVE_TASK_PT_REGS
	return (u64)bpf_task_pt_regs(bpf_get_current_task_btf());
#else
	/* Before bpf_task_pt_regs (5.15): task_pt_regs() is at the top of the task's kernel
	 * stack, THREAD_SIZE and the top padding as user space computed them. */
	u64 stack = vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_STACK);
	return stack + VMT_OFF_THREAD_SIZE - VMT_OFF_STACK_TOP_PADDING - VMT_OFF_PT_REGS_SIZE;
#endif
}

struct vmt_regs {
	s64 nr;
	u64 args[VMT_NARGS];
	u64 ip;
	u64 sp;
	u64 bp;
	int ok;
};

/* x86_64's pt_regs keeps r10 ... di, orig_ax, ip in consecutive words: one read then
 * gives the call, its arguments and ip. Any other layout is read field by field. */
#if VMT_OFF_PT_REGS_R9 == VMT_OFF_PT_REGS_R10 + 8 && VMT_OFF_PT_REGS_R8 == VMT_OFF_PT_REGS_R10 + 16
#if VMT_OFF_PT_REGS_DX == VMT_OFF_PT_REGS_R10 + 40 && VMT_OFF_PT_REGS_SI == VMT_OFF_PT_REGS_R10 + 48
#if VMT_OFF_PT_REGS_DI == VMT_OFF_PT_REGS_R10 + 56 && VMT_OFF_PT_REGS_ORIG_AX == VMT_OFF_PT_REGS_R10 + 64
#if VMT_OFF_PT_REGS_IP == VMT_OFF_PT_REGS_R10 + 72
#define VMT_REGS_IN_ONE_READ 1
#endif
#endif
#endif
#endif

/* The call from a pt_regs of user registers (number, arguments, ip); nr is -2 when they
 * cannot be read. */
static __always_inline void vmt_read_call(u64 regs, struct vmt_regs *r)
{
#ifdef VMT_REGS_IN_ONE_READ
	u64 w[10];
	r->ok = regs != 0 &&
		bpf_probe_read_kernel(w, sizeof(w), (void *)(regs + VMT_OFF_PT_REGS_R10)) == 0;
	if (!r->ok) {
		r->nr = -2;
		return;
	}
	r->nr = (s64)w[8];
	r->args[0] = w[7];
	r->args[1] = w[6];
	r->args[2] = w[5];
	r->args[3] = w[0];
	r->args[4] = w[2];
	r->args[5] = w[1];
	r->ip = w[9];
#else
	u64 orig_ax = 0;
	r->ok = regs != 0 &&
		bpf_probe_read_kernel(&orig_ax, sizeof(orig_ax),
				      (void *)(regs + VMT_OFF_PT_REGS_ORIG_AX)) == 0;
	if (!r->ok) {
		r->nr = -2;
		return;
	}
	r->nr = (s64)orig_ax;
	r->args[0] = vmt_read_u64(regs + VMT_OFF_PT_REGS_DI);
	r->args[1] = vmt_read_u64(regs + VMT_OFF_PT_REGS_SI);
	r->args[2] = vmt_read_u64(regs + VMT_OFF_PT_REGS_DX);
	r->args[3] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R10);
	r->args[4] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R8);
	r->args[5] = vmt_read_u64(regs + VMT_OFF_PT_REGS_R9);
	r->ip = vmt_read_u64(regs + VMT_OFF_PT_REGS_IP);
#endif
}

/* The call and where the user stack is (what a stack snapshot needs). */
static __always_inline void vmt_read_regs(u64 regs, struct vmt_regs *r)
{
	vmt_read_call(regs, r);
	if (!r->ok)
		return;
	r->sp = vmt_read_u64(regs + VMT_OFF_PT_REGS_SP);
	r->bp = vmt_read_u64(regs + VMT_OFF_PT_REGS_BP);
}

static __always_inline int vmt_decoded_call(s64 nr)
{
	return nr == NR_MMAP || nr == NR_MUNMAP || nr == NR_BRK || nr == NR_MREMAP ||
	       nr == NR_SHMAT || nr == NR_SHMDT;
}

static __always_inline int vmt_exec_call(s64 nr)
{
	return nr == NR_EXECVE || nr == NR_EXECVEAT;
}

#endif
