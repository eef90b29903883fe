/* vmtrace tracepoint backend: no kprobes, no BPF trampolines, and no syscall tracepoints
 * (enabling any of those puts every syscall of every task on the host on the slow path).
 *
 * Every writer of mm->total_vm and mm->hiwater_vm holds mmap_lock for writing, and
 * mmap_lock_released fires before the lock is dropped. A task that takes the lock for
 * writing is marked; at its release (or at the release of the read lock it downgraded
 * to: munmap lowers total_vm and latches hiwater_vm after mmap_write_downgrade) it
 * compares the counters with their last accounted values and commits the difference:
 * one whole change, made by that task. The call is read from the task's saved user
 * registers; the free range the kernel picked for a new mapping from vm_unmapped_area.
 *
 * Raw tracepoints: the program gets the tracepoint's own arguments, without the event
 * record the kernel would otherwise build for every lock operation of every task (the
 * memcg lookup of mmap_lock's, the perf buffer). The bools come last, after the mm and,
 * on kernels whose lock tracepoints name the memcg, its path: VMT_OFF_LOCK_TP_ARGS says
 * how many arguments there are.
 */
#include "observe.h"
#include "lifecycle.h"
#include "rss.h"

#define VMT_LOCK_MM() ((u64)ctx->args[0])
#define VMT_LOCK_WRITE() ((u8)ctx->args[(VMT_OFF_LOCK_TP_ARGS - 1) & 3])
#define VMT_LOCK_SUCCESS() ((u8)ctx->args[VMT_OFF_LOCK_TP_ARGS & 3])

RAW_TRACEPOINT_PROBE(mmap_lock_acquire_returned)
{
	if (!VMT_LOCK_WRITE() || !VMT_LOCK_SUCCESS())
		return 0;  /* read locks (a downgrade among them) change nothing here */
	u64 host = bpf_get_current_pid_tgid();
	u32 tid = (u32)host;  /* the writer mark is the kernel's tid */
	u32 tgid = vmt_view_tgid(host);
	struct target_state *st = target_of(tgid);
	if (!st)
		return 0;
	u64 mm = VMT_LOCK_MM();
	if (mm == 0)
		return 0;
	/* Besides its own mm, a task write-locks only one it is building (a fork's child, an
	 * exec's new image), never the state's: that is the process's own until its exec,
	 * which moves the state on before its address could be reused. So only another mm
	 * needs the task's checked. */
	if (st->mm != mm) {
		if (mm != vmt_current_mm())
			return 0;  /* someone else's mm (exec building the new one, a remote writer) */
		/* before the writer changes anything: a baseline, or an exec's new image */
		struct vmt_regs r = {};
		vmt_read_call(vmt_user_regs(), &r);
		vmt_new_mm(st, mm, r.nr);
	}
	/* One writer per mm at a time (the lock is exclusive, and a downgraded holder keeps
	 * other writers out until it releases): its mark lives in the process's state. */
	st->writer = tid;
	st->writer_mm = mm;
	st->area.seen = 0;
	return 0;
}

/* (addr, struct vm_unmapped_area_info *) */
RAW_TRACEPOINT_PROBE(vm_unmapped_area)
{
	u64 host = bpf_get_current_pid_tgid();
	u32 tgid = vmt_view_tgid(host);
	struct target_state *st = targets.lookup(&tgid);
	if (!st || st->writer != (u32)host)
		return 0;
	st->area.addr = (u64)ctx->args[0];
	st->area.len = vmt_read_u64((u64)ctx->args[1] + VMT_OFF_UNMAPPED_INFO_LENGTH);
	st->area.seen = 1;
	return 0;
}

RAW_TRACEPOINT_PROBE(mmap_lock_released)
{
	u64 host = bpf_get_current_pid_tgid();
	u32 tid = (u32)host;
	u32 tgid = vmt_view_tgid(host);
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	u64 mm = VMT_LOCK_MM();
	if (mm == 0 || st->mm != mm)
		return 0;
	struct vmt_area area = {};
	int marked = st->writer == tid && st->writer_mm == mm;
	if (marked) {
		/* marked at its acquire of the process's own mm */
		__builtin_memcpy(&area, &st->area, sizeof(area));
	} else if (mm != vmt_current_mm()) {
		return 0;
	} else if (!VMT_LOCK_WRITE()) {
		/* A reader. On kernels that grow the stack under the read lock (before 6.5),
		 * a page fault's stack growth is committed by the faulting reader; any other
		 * change seen by a reader belongs to a writer that has not released yet. */
		struct mm_snap now = {};
		vmt_read_mm(mm, &now);
		if (now.stack_vm == st->stack_vm)
			return 0;
		struct vmt_regs r = {};
		vmt_read_call(vmt_user_regs(), &r);
		if (r.nr != -1)
			return 0;
	}
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	if (st->in_exec) {
		vmt_accept(st, mm, &now, 1);  /* the exec record reports the new image */
	} else if (now.total_vm != st->total_vm || now.hiwater_vm != st->hiwater_vm) {
		struct mm_snap before = {
			.total_vm = st->total_vm,
			.hiwater_vm = st->hiwater_vm,
			.stack_vm = st->stack_vm,
		};
		vmt_commit(st, mm, &before, &now, st->peak, 0, 0, 0, &area);
	}
	/* Cleared only once the change is sent: user space reads a /proc figure as one the
	 * records may not show yet for as long as the mark is set. */
	if (marked)
		st->writer = 0;
	return 0;
}
