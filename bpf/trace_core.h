/* What every vmtrace backend shares: the maps, the record emission, the syscall context
 * (syscall tracepoints), and `vmt_observe()`, which compares a traced mm's counters with
 * the values last accounted for and turns any difference into a record.
 *
 * Backends differ only in where they call vmt_observe():
 *   tracepoint.c  at every mmap_lock release (one call per lock hold: changes are whole)
 *   kprobe.c      on return from each function that writes total_vm (kretprobes), and at
 *                 the entry of the unmap path, i.e. before hiwater_vm is latched
 *   fentry.c      the same sites through BPF trampolines
 * Inside a lock hold the counters can pass through states no reader of /proc can see: a
 * moving mremap adds the new length before it unmaps the old range and restores
 * hiwater_vm afterwards. Backends that observe inside lock holds define
 * VMT_MERGE_WITHIN_CALL: all changes of one traced syscall then make one record, judged at
 * the syscall's exit against the peak as it was before the call.
 *
 * Needs: -DVMT_OFF_* (BTF offsets), VMT_RINGBUF_PAGES, VMT_WAKEUP_EVERY.
 */
#ifndef VMTRACE_TRACE_CORE_H
#define VMTRACE_TRACE_CORE_H

#include "mm_common.h"

#ifndef VMT_MERGE_WITHIN_CALL
#define VMT_MERGE_WITHIN_CALL 0
#endif

#define NR_MMAP 9
#define NR_MUNMAP 11
#define NR_BRK 12
#define NR_MREMAP 25
#define NR_SHMAT 30
#define NR_EXECVE 59
#define NR_SHMDT 67

/* A traced syscall in progress on one thread. */
struct inflight_call {
	u64 mm;
	u64 args[VMT_NARGS];
	s32 nr;
	u32 has_pending;
	struct target_state at_enter;  /* for execve: the old mm's values */
	struct vmt_event pending;      /* the change made inside the call, sent at exit */
};

#ifndef VMT_MAX_TARGETS
#define VMT_MAX_TARGETS 1024
#endif

struct vmt_comm_key {
	char comm[VMT_COMM_LEN];
};

BPF_HASH(targets, u32, struct target_state, VMT_MAX_TARGETS);
BPF_ARRAY(config, struct vmt_config, 1);
BPF_HASH(comms, struct vmt_comm_key, u8, 64);
BPF_TABLE("lru_hash", u32, struct inflight_call, inflight, 16384);
BPF_RINGBUF_OUTPUT(events, VMT_RINGBUF_PAGES);
BPF_STACK_TRACE(stacks, 16384);
BPF_PERCPU_ARRAY(counters, u64, VMT_CNT_MAX);
BPF_PERCPU_ARRAY(scratch, struct vmt_event, 1);

/* The traced state of process `tgid`, creating it when an auto-add rule (--all, --cgroup,
 * --comm) covers the current task; NULL when the process is not traced. */
static __always_inline struct target_state *target_of(u32 tgid)
{
	struct target_state *st = targets.lookup(&tgid);
	if (st)
		return st;
	int zero = 0;
	struct vmt_config *cfg = config.lookup(&zero);
	if (!cfg || !(cfg->all || cfg->cgroup_id || cfg->comm_filter))
		return 0;
	if (tgid == cfg->self_tgid)
		return 0;
	if (vmt_current_mm() == 0)
		return 0;  /* kernel threads have no address space to explain */
	int covered = cfg->all;
#ifdef VMT_CGROUP_FILTER
	/* Compiled only for --cgroup: older kernels (5.10) refuse this helper in tracing programs. */
	if (!covered && cfg->cgroup_id)
		covered = bpf_get_current_ancestor_cgroup_id(cfg->cgroup_level) == cfg->cgroup_id;
#endif
	if (!covered && cfg->comm_filter) {
		struct vmt_comm_key key = {};
		bpf_get_current_comm(&key.comm, sizeof(key.comm));
		covered = comms.lookup(&key) != 0;
	}
	if (!covered)
		return 0;
	struct target_state fresh = {};
	targets.insert(&tgid, &fresh);
	return targets.lookup(&tgid);
}

static __always_inline void count(int idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* --min-delta: changes that neither raise VmPeak by enough nor latch hiwater_vm stay in
 * the kernel; the peak is still tracked exactly (targets map), so the next record and the
 * samples remain right. */
static __always_inline int worth_sending(struct vmt_event *e, struct vmt_config *cfg)
{
	if (e->kind != VMT_KIND_SYSCALL && e->kind != VMT_KIND_OTHER)
		return 1;
	if (!cfg || cfg->min_delta_pages == 0)
		return 1;
	if (e->hiwater_vm_after != e->hiwater_vm_before)
		return 1;
	return (e->flags & VMT_FLAG_NEW_PEAK) &&
	       e->total_vm_after >= e->peak_before + cfg->min_delta_pages;
}

static __always_inline void submit(struct vmt_event *e)
{
	int zero = 0;
	struct vmt_config *cfg = config.lookup(&zero);
	if (cfg && cfg->stopped)
		return;
	if (!worth_sending(e, cfg)) {
		count(VMT_CNT_FILTERED);
		return;
	}
	int idx = VMT_CNT_EMITTED;
	u64 *emitted = counters.lookup(&idx);
	u64 n = emitted ? *emitted : 0;
	/* Waking the reader for every record costs the traced task an IPI; the reader
	 * polls on a short timeout anyway, so only new peaks (worth showing at once) and
	 * every VMT_WAKEUP_EVERY-th record (so a busy ring is drained) wake it. */
	u64 flags = ((e->flags & VMT_FLAG_NEW_PEAK) || (n % VMT_WAKEUP_EVERY) == 0) ?
		BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (events.ringbuf_output(e, sizeof(*e), flags) < 0) {
		count(VMT_CNT_LOST);
		return;
	}
	if (emitted)
		(*emitted)++;
}

static __always_inline struct vmt_event *new_event(u32 kind, u32 tgid, u32 tid)
{
	int zero = 0;
	struct vmt_event *e = scratch.lookup(&zero);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = tgid;
	e->tid = tid;
	e->kind = kind;
	e->stack_id = -1;
	e->rss_member = -1;
	e->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void fill_rss(struct vmt_event *e, u64 mm)
{
	e->rss_after = vmt_read_rss(mm);
	e->hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
}

static __always_inline u64 vmt_vmhwm(u64 mm)
{
	return vmt_max(vmt_read_rss(mm), vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS));
}

static __always_inline void fill_change(struct vmt_event *e, struct target_state *st,
					struct mm_snap *now)
{
	e->total_vm_before = st->total_vm;
	e->hiwater_vm_before = st->hiwater_vm;
	e->stack_vm_before = st->stack_vm;
	e->peak_before = st->peak;
	e->total_vm_after = now->total_vm;
	e->hiwater_vm_after = now->hiwater_vm;
	e->stack_vm_after = now->stack_vm;
	if (now->total_vm > st->peak)
		e->flags |= VMT_FLAG_NEW_PEAK;
	fill_rss(e, st->mm ? st->mm : vmt_current_mm());
}

/* The counters `now` are accounted for; `with_peak` also raises the mm's peak. */
static __always_inline void accept(struct target_state *st, u64 mm, struct mm_snap *now,
				   int with_peak)
{
	st->mm = mm;
	st->total_vm = now->total_vm;
	st->hiwater_vm = now->hiwater_vm;
	st->stack_vm = now->stack_vm;
	if (with_peak)
		st->peak = vmt_max(st->peak, vmt_max(now->total_vm, now->hiwater_vm));
}

static __always_inline void user_stack(void *ctx, struct vmt_event *e)
{
	e->stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK | BPF_F_REUSE_STACKID);
	if (e->stack_id < 0)
		count(VMT_CNT_STACK_ERR);
}

/* First sight of a target's mm (or of a new one we did not see exec'd): its values now. */
static __always_inline void baseline(struct target_state *st, u64 mm, struct mm_snap *now,
				     u32 tgid, u32 tid)
{
	st->peak = 0;
	accept(st, mm, now, 1);
	st->hwm_sent = vmt_vmhwm(mm);
	struct vmt_event *e = new_event(VMT_KIND_BASELINE, tgid, tid);
	if (!e)
		return;
	fill_rss(e, mm);
	/* no change to explain: before and after are both what the probes first saw */
	e->total_vm_before = e->total_vm_after = now->total_vm;
	e->hiwater_vm_before = e->hiwater_vm_after = now->hiwater_vm;
	e->stack_vm_before = e->stack_vm_after = now->stack_vm;
	e->peak_before = st->peak;
	e->syscall_nr = -1;
	submit(e);
}

/* The current task may just have changed the counters of `mm` (its own). */
static __always_inline void vmt_observe(void *ctx, u64 mm)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct target_state *st = target_of(tgid);
	if (!st)
		return;
	/* Someone else's mm (exec building the new one, a remote reader): not ours to judge. */
	if (mm == 0 || mm != vmt_current_mm())
		return;

	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	struct inflight_call *call = inflight.lookup(&tid);

	if (st->mm != mm) {
		if (call && call->nr == NR_EXECVE) {
			/* the new mm of an exec in progress: the execve exit reports it */
			st->peak = 0;
			accept(st, mm, &now, 1);
		} else {
			baseline(st, mm, &now, tgid, tid);
		}
		return;
	}
	if (now.total_vm == st->total_vm && now.hiwater_vm == st->hiwater_vm)
		return;

	if (call && call->nr == NR_EXECVE) {
		accept(st, mm, &now, 1);
		return;
	}
	if (call && call->mm == mm) {
		/* Keep it for the syscall's exit, where the return value is known. */
		if (VMT_MERGE_WITHIN_CALL && call->has_pending) {
			call->pending.total_vm_after = now.total_vm;
			call->pending.hiwater_vm_after = now.hiwater_vm;
			call->pending.stack_vm_after = now.stack_vm;
			call->pending.flags |= VMT_FLAG_MERGED;
			accept(st, mm, &now, 0);
			return;
		}
		/* Observed at lock release: each lock hold is a whole change, sent on its own. */
		if (call->has_pending)
			submit(&call->pending);
		struct vmt_event *e = new_event(VMT_KIND_SYSCALL, tgid, tid);
		if (!e)
			return;
		fill_change(e, st, &now);
		e->syscall_nr = call->nr;
		__builtin_memcpy(e->args, call->args, sizeof(e->args));
		__builtin_memcpy(&call->pending, e, sizeof(*e));
		call->has_pending = 1;
		accept(st, mm, &now, !VMT_MERGE_WITHIN_CALL);
		return;
	}

	struct vmt_event *e = new_event(VMT_KIND_OTHER, tgid, tid);
	if (!e)
		return;
	fill_change(e, st, &now);
	vmt_fill_from_regs(e);
	if (now.total_vm > st->total_vm)
		user_stack(ctx, e);
	accept(st, mm, &now, 1);
	submit(e);
}

static __always_inline int on_enter(s32 nr, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct target_state *st = target_of(tgid);
	if (!st)
		return 0;
	u64 mm = vmt_current_mm();
	if (st->mm != mm) {
		struct mm_snap now = {};
		vmt_read_mm(mm, &now);
		baseline(st, mm, &now, tgid, tid);
	}
	struct inflight_call call = {};
	call.mm = mm;
	call.nr = nr;
	call.args[0] = a0;
	call.args[1] = a1;
	call.args[2] = a2;
	call.args[3] = a3;
	call.args[4] = a4;
	call.args[5] = a5;
	__builtin_memcpy(&call.at_enter, st, sizeof(call.at_enter));
	inflight.update(&tid, &call);
	return 0;
}

static __always_inline int on_exit(void *ctx, s64 ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct inflight_call *call = inflight.lookup(&tid);
	if (!call)
		return 0;
	struct target_state *st = targets.lookup(&tgid);

	if (call->nr == NR_EXECVE) {
		if (ret == 0 && st) {
			u64 mm = vmt_current_mm();
			struct mm_snap now = {};
			vmt_read_mm(mm, &now);
			struct vmt_event *e = new_event(VMT_KIND_EXEC, tgid, tid);
			if (e) {
				e->syscall_nr = NR_EXECVE;
				e->ret = ret;
				e->flags |= VMT_FLAG_HAS_RET;
				e->total_vm_before = call->at_enter.total_vm;
				e->hiwater_vm_before = call->at_enter.hiwater_vm;
				e->stack_vm_before = call->at_enter.stack_vm;
				e->peak_before = call->at_enter.peak;
				e->total_vm_after = now.total_vm;
				e->hiwater_vm_after = now.hiwater_vm;
				e->stack_vm_after = now.stack_vm;
				fill_rss(e, mm);
				__builtin_memcpy(e->args, call->args, sizeof(e->args));
				user_stack(ctx, e);
				submit(e);
			}
			st->peak = 0;
			accept(st, mm, &now, 1);
			st->hwm_sent = vmt_vmhwm(mm);
		}
		inflight.delete(&tid);
		return 0;
	}
	/* Whatever the observation points missed (a writer that could not be probed, a
	 * restore after the last one) is seen here. Not for lock-release observers: the lock
	 * is gone by now, and another thread's change still under its own lock would be
	 * taken for this call's. */
	if (VMT_MERGE_WITHIN_CALL && st)
		vmt_observe(ctx, call->mm);
	call = inflight.lookup(&tid);
	if (call && call->has_pending) {
		call->pending.ret = ret;
		call->pending.flags |= VMT_FLAG_HAS_RET;
		if (VMT_MERGE_WITHIN_CALL && st) {
			/* judged on the call's net effect, against the peak before the call */
			struct mm_snap last = {
				.total_vm = call->pending.total_vm_after,
				.hiwater_vm = call->pending.hiwater_vm_after,
				.stack_vm = call->pending.stack_vm_after,
			};
			call->pending.peak_before = st->peak;
			fill_rss(&call->pending, call->mm);
			if (last.total_vm > st->peak)
				call->pending.flags |= VMT_FLAG_NEW_PEAK;
			else
				call->pending.flags &= ~VMT_FLAG_NEW_PEAK;
			st->peak = vmt_max(st->peak, vmt_max(last.total_vm, last.hiwater_vm));
		}
		if (call->pending.flags & VMT_FLAG_NEW_PEAK)
			user_stack(ctx, &call->pending);
		submit(&call->pending);
	}
	inflight.delete(&tid);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_mmap)
{
	return on_enter(NR_MMAP, args->addr, args->len, args->prot, args->flags, args->fd,
			args->off);
}
TRACEPOINT_PROBE(syscalls, sys_exit_mmap) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_munmap)
{
	return on_enter(NR_MUNMAP, args->addr, args->len, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_munmap) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_brk)
{
	return on_enter(NR_BRK, args->brk, 0, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_brk) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_mremap)
{
	return on_enter(NR_MREMAP, args->addr, args->old_len, args->new_len, args->flags,
			args->new_addr, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_mremap) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_shmat)
{
	return on_enter(NR_SHMAT, (u64)args->shmid, (u64)args->shmaddr, (u64)args->shmflg, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmat) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_shmdt)
{
	return on_enter(NR_SHMDT, (u64)args->shmaddr, 0, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_shmdt) { return on_exit(args, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	return on_enter(NR_EXECVE, (u64)args->filename, 0, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return on_exit(args, args->ret); }

/* The mm is torn down. Only a task that already dropped its mm (exit_mm cleared
 * current->mm) is exiting; an exec drops its old mm with current->mm already new. */
static __always_inline void vmt_mm_exiting(u64 mm)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct target_state *st = targets.lookup(&tgid);
	/* st->mm == 0: exiting before the probes ever saw it act (no baseline yet) */
	if (!st || (st->mm != 0 && st->mm != mm) || vmt_current_mm() != 0)
		return;
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	struct vmt_event *e = new_event(VMT_KIND_EXIT, tgid, tid);
	if (!e)
		return;
	fill_change(e, st, &now);
	e->flags &= ~VMT_FLAG_NEW_PEAK;
	e->syscall_nr = -1;
	submit(e);
	/* Forget the process here, not when user space gets to it: a new process given the
	 * same pid meanwhile must not be taken for this one. */
	targets.delete(&tgid);
}

#ifdef VMT_HAVE_EXIT_MMAP
TRACEPOINT_PROBE(mmap, exit_mmap)
{
	vmt_mm_exiting((u64)args->mm);
	return 0;
}
#endif

/* --follow: a traced process forks; its child (not a new thread) is traced from here on,
 * before it runs. Raw tracepoint: the tracepoint's own fields name pids, not the tgid. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	int zero = 0;
	struct vmt_config *cfg = config.lookup(&zero);
	if (!cfg || !cfg->follow)
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	if (!targets.lookup(&tgid))
		return 0;
	u64 child = (u64)ctx->args[1];
	u32 child_tgid = 0;
	bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), (void *)(child + VMT_OFF_TASK_TGID));
	if (child_tgid == 0 || child_tgid == tgid)
		return 0;  /* a thread: already covered by its process */
	struct target_state fresh = {};
	targets.insert(&child_tgid, &fresh);
	struct vmt_event *e = new_event(VMT_KIND_FORK, child_tgid, child_tgid);
	if (!e)
		return 0;
	e->args[0] = tgid;
	e->syscall_nr = -1;
	submit(e);
	return 0;
}

#ifdef VMT_TRACE_RSS
/* VmHWM: RSS counters change in page faults (mostly without mmap_lock) and in unmaps;
 * kmem:rss_stat fires on each change. Raw: args[0] is the mm (the event's mm_id is a
 * keyed hash), args[1] the counter. The counters read are the shared values /proc reads,
 * so each record's VmHWM is what /proc/PID/status would have said at that moment. */
RAW_TRACEPOINT_PROBE(rss_stat)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	u64 mm = (u64)ctx->args[0];
	if (mm == 0 || st->mm != mm || mm != vmt_current_mm())
		return 0;
	int zero = 0;
	struct vmt_config *cfg = config.lookup(&zero);
	if (!cfg || cfg->hwm_step_pages == 0)
		return 0;
	u64 rss = vmt_read_rss(mm);
	u64 hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
	u64 hwm = vmt_max(rss, hiwater_rss);
	if (hwm < st->hwm_sent + cfg->hwm_step_pages)
		return 0;
	struct vmt_event *e = new_event(VMT_KIND_HWM, tgid, tid);
	if (!e)
		return 0;
	e->rss_before = st->hwm_sent;
	e->rss_after = rss;
	e->hiwater_rss = hiwater_rss;
	e->rss_member = (s32)ctx->args[1];
	e->total_vm_before = e->total_vm_after = st->total_vm;
	e->hiwater_vm_before = e->hiwater_vm_after = st->hiwater_vm;
	e->stack_vm_before = e->stack_vm_after = st->stack_vm;
	e->peak_before = st->peak;
	vmt_fill_from_regs(e);
	user_stack(ctx, e);
	st->hwm_sent = hwm;
	submit(e);
	return 0;
}
#endif

#endif
