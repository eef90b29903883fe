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
 */
#include "observe.h"
#include "lifecycle.h"
#include "rss.h"

/* A task holding a traced mm's lock for writing (or the read lock it downgraded to). */
struct vmt_hold {
	u64 mm;
	struct vmt_area area;
};

BPF_TABLE("lru_hash", u32, struct vmt_hold, holds, 16384);

TRACEPOINT_PROBE(mmap_lock, mmap_lock_acquire_returned)
{
	if (!args->write || !args->success)
		return 0;  /* read locks (a downgrade among them) change nothing here */
	u64 host = bpf_get_current_pid_tgid();
	u32 tid = (u32)host;  /* holds are the kernel's: host tids */
	u32 tgid = vmt_view_tgid(host);
	struct target_state *st = target_of(tgid);
	if (!st)
		return 0;
	u64 mm = (u64)args->mm;
	if (mm == 0 || mm != vmt_current_mm())
		return 0;  /* someone else's mm (exec building the new one, a remote writer) */
	if (st->mm != mm) {
		/* before the writer changes anything: a baseline, or an exec's new image */
		struct vmt_regs r = {};
		vmt_read_regs(vmt_user_regs(), &r);
		vmt_new_mm(st, mm, r.nr);
	}
	struct vmt_hold h = {.mm = mm};
	holds.update(&tid, &h);
	return 0;
}

TRACEPOINT_PROBE(mmap, vm_unmapped_area)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct vmt_hold *h = holds.lookup(&tid);
	if (!h)
		return 0;
	h->area.addr = args->addr;
	h->area.len = args->length;
	h->area.seen = 1;
	return 0;
}

TRACEPOINT_PROBE(mmap_lock, mmap_lock_released)
{
	u64 host = bpf_get_current_pid_tgid();
	u32 tid = (u32)host;
	u32 tgid = vmt_view_tgid(host);
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	u64 mm = (u64)args->mm;
	if (mm == 0 || mm != vmt_current_mm() || st->mm != mm)
		return 0;
	struct vmt_hold hold = {};
	struct vmt_hold *h = holds.lookup(&tid);
	if (h && h->mm == mm) {
		__builtin_memcpy(&hold, h, sizeof(hold));
		holds.delete(&tid);
	} else if (!args->write) {
		/* A reader. On kernels that grow the stack under the read lock (before 6.5),
		 * a page fault's stack growth is committed by the faulting reader; any other
		 * change seen by a reader belongs to a writer that has not released yet. */
		struct mm_snap now = {};
		vmt_read_mm(mm, &now);
		if (now.stack_vm == st->stack_vm)
			return 0;
		struct vmt_regs r = {};
		vmt_read_regs(vmt_user_regs(), &r);
		if (r.nr != -1)
			return 0;
	}
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	if (st->in_exec) {
		vmt_accept(st, mm, &now, 1);  /* the exec record reports the new image */
		return 0;
	}
	if (now.total_vm == st->total_vm && now.hiwater_vm == st->hiwater_vm)
		return 0;
	struct mm_snap before = {
		.total_vm = st->total_vm,
		.hiwater_vm = st->hiwater_vm,
		.stack_vm = st->stack_vm,
	};
	vmt_commit(st, mm, &before, &now, st->peak, 0, 0, 0, &hold.area);
	return 0;
}
