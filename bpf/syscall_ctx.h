/* The kprobe and fentry backends observe inside the writing functions, where the counters
 * can pass through states no reader of /proc can see (a moving mremap adds the new length
 * before it unmaps the old range and restores hiwater_vm afterwards). So the changes of
 * one decoded call (mmap, munmap, brk, mremap, shmat, shmdt) are merged and judged at its
 * return, against the peak before the call. The call's entry and return are probed on its
 * own syscall function, which only the tasks making that call pay for; changes outside
 * those calls (stack growth in a page fault, other syscalls) are committed at once, with
 * the call read from the task's saved user registers.
 */
#ifndef VMTRACE_SYSCALL_CTX_H
#define VMTRACE_SYSCALL_CTX_H

#include "observe.h"

struct inflight_call {
	u64 mm;
	u64 regs;              /* the task's user pt_regs, as the syscall function got them */
	struct vmt_regs call;
	u32 has_change;
	u32 pad;
	struct mm_snap before; /* the counters before the call's first change */
	struct mm_snap after;  /* and after its latest */
	u64 peak_before;
};

/* A plain hash, not an LRU: a call in flight is never pushed out unseen. Each is deleted
 * at its return, or when its thread exits; one that finds no room is counted. */
BPF_HASH(inflight, u32, struct inflight_call, 16384);
#define VMT_THREAD_STATE 1
static __always_inline void vmt_thread_exit(u32 tid)
{
	inflight.delete(&tid);
}

#include "lifecycle.h"
#include "rss.h"

static __always_inline int vmt_call_enter(u64 regs)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	u32 tid = (u32)bpf_get_current_pid_tgid();  /* calls in flight are keyed by host tid */
	struct target_state *st = target_of(tgid);
	if (!st)
		return 0;
	u64 mm = vmt_current_mm();
	struct inflight_call call = {};
	call.mm = mm;
	call.regs = regs;
	vmt_read_regs(regs, &call.call);
	if (st->mm != mm)
		vmt_new_mm(st, mm, call.call.nr);
	if (inflight.update(&tid, &call) != 0)
		count(VMT_CNT_CALLS_FULL);  /* its changes are then judged one by one */
	return 0;
}

/* The current task may just have changed the counters of its own mm. */
static __always_inline void vmt_observe(u64 mm)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	u32 tid = (u32)bpf_get_current_pid_tgid();  /* calls in flight are keyed by host tid */
	struct target_state *st = target_of(tgid);
	if (!st || mm == 0 || mm != vmt_current_mm())
		return;
	struct inflight_call *call = inflight.lookup(&tid);
	if (st->mm != mm) {
		struct vmt_regs r = {};
		vmt_read_regs(vmt_user_regs(), &r);
		vmt_new_mm(st, mm, r.nr);
		return;
	}
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	if (now.total_vm == st->total_vm && now.hiwater_vm == st->hiwater_vm)
		return;
	if (st->in_exec) {
		vmt_accept(st, mm, &now, 1);  /* the exec record reports the new image */
		return;
	}
	if (call && call->mm == mm) {
		if (!call->has_change) {
			call->before.total_vm = st->total_vm;
			call->before.hiwater_vm = st->hiwater_vm;
			call->before.stack_vm = st->stack_vm;
			call->peak_before = st->peak;
			call->has_change = 1;
		}
		call->after = now;
		vmt_accept(st, mm, &now, 0);
		return;
	}
	struct mm_snap before = {
		.total_vm = st->total_vm,
		.hiwater_vm = st->hiwater_vm,
		.stack_vm = st->stack_vm,
	};
	vmt_commit(st, mm, &before, &now, st->peak, 0, 0, 0, 0);
}

static __always_inline int vmt_call_return(s64 ret)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	u32 tid = (u32)bpf_get_current_pid_tgid();  /* calls in flight are keyed by host tid */
	struct inflight_call *call = inflight.lookup(&tid);
	if (!call)
		return 0;
	struct target_state *st = targets.lookup(&tgid);
	if (st)
		vmt_observe(call->mm);  /* whatever the writing functions' probes missed */
	call = inflight.lookup(&tid);
	if (call && st && call->has_change && st->mm == call->mm) {
		struct mm_snap before = call->before, after = call->after;
		struct vmt_regs r = call->call;
		vmt_commit(st, call->mm, &before, &after, call->peak_before, &r, ret, 1, 0);
	}
	inflight.delete(&tid);
	return 0;
}

#endif
