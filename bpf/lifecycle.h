/* A traced process's life: exec (a new image, its peak starting over), exit of its last
 * thread, and --follow's children added at fork before they run. */
#ifndef VMTRACE_LIFECYCLE_H
#define VMTRACE_LIFECYCLE_H

#include "observe.h"

/* Every exec, whatever the call (execve, execveat/fexecve) and whichever thread made it:
 * the image is in place and current->mm is the new mm. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	u64 mm = vmt_current_mm();
	struct vmt_regs r = {};
	vmt_read_regs(vmt_user_regs(), &r);
	if (st->mm != mm)  /* no lock of the new mm was seen: the probes came in late */
		vmt_new_mm(st, mm, vmt_exec_call(r.nr) ? r.nr : NR_EXECVE);
	/* The registers say execve whichever call it was. An exec through a descriptor
	 * (execveat, fexecve) is the one the kernel names /dev/fd/N[/path]. */
	char name[8] = {};
	u64 bprm = (u64)ctx->args[2];
	bpf_probe_read_kernel_str(name, sizeof(name),
				  (void *)vmt_read_u64(bprm + VMT_OFF_BINPRM_FILENAME));
	r.nr = name[0] == '/' && name[1] == 'd' && name[2] == 'e' && name[3] == 'v' &&
	       name[4] == '/' && name[5] == 'f' && name[6] == 'd' ? NR_EXECVEAT : NR_EXECVE;
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	struct mm_snap before = {
		.total_vm = st->exec_total_vm,
		.hiwater_vm = st->exec_hiwater_vm,
		.stack_vm = st->exec_stack_vm,
	};
	u64 old_peak = st->exec_peak;
	st->in_exec = 0;
	st->peak = 0;
	vmt_accept(st, mm, &now, 1);
	st->reported_peak = st->peak;
	st->folded = 0;
	st->hwm_sent = vmt_vmhwm(mm);
	/* no file part: the new image's mappings are read from /proc when the record arrives,
	 * and the path walk would make this program too complex for older verifiers */
	struct vmt_event *e;
	if (!vmt_reserve(&e, st, 1, 0, 0))
		return 0;
	e->kind = VMT_KIND_EXEC;
	vmt_fill_counters(e, &before, &now, old_peak, mm);
	vmt_fill_call(e, &r);
	e->aux = (u32)ctx->args[1];  /* old_pid: the thread that called exec */
	vmt_submit(e);
	return 0;
}

/* The last thread of a traced process is exiting (its mm may be torn down later, by
 * whoever drops the last reference): the counters accounted for are the final ones, since
 * exit_mmap changes neither total_vm nor hiwater_vm. The process is forgotten here, so
 * that a new process given the same pid is never taken for this one. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
#ifdef VMT_THREAD_STATE
	vmt_thread_exit((u32)bpf_get_current_pid_tgid());  /* the backend's per-thread state */
#endif
	u64 signal = vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_SIGNAL);
	if ((s32)vmt_read_u32(signal + VMT_OFF_SIGNAL_LIVE) != 0)
		return 0;  /* other threads live on */
	struct target_state last = {};
	__builtin_memcpy(&last, st, sizeof(last));
	/* two threads exiting together both see live == 0: the one that deletes reports */
	if (targets.delete(&tgid) != 0)
		return 0;
	if (last.mm == 0)
		return 0;  /* exited before the probes ever saw it act */
	struct vmt_event *e;
	if (!vmt_reserve(&e, 0, 1, 0, 0))
		return 0;
	e->kind = VMT_KIND_EXIT;
	e->mm_id = last.mm;
	e->total_vm_before = e->total_vm_after = last.total_vm;
	e->hiwater_vm_before = e->hiwater_vm_after = last.hiwater_vm;
	e->stack_vm_before = e->stack_vm_after = last.stack_vm;
	e->peak_before = last.peak;
	e->rss_file = last.rss_file;
	e->rss_anon = last.rss_anon;
	e->rss_shmem = last.rss_shmem;
	e->hiwater_rss = last.hiwater_rss;
	e->lost = last.lost;
	e->tallied = last.tallied;
	e->tallied_grown = last.tallied_grown;
	e->tallied_shrunk = last.tallied_shrunk;
	e->aux = vmt_read_u32(bpf_get_current_task() + VMT_OFF_TASK_EXIT_CODE);
	vmt_submit(e);
	return 0;
}

#ifdef VMT_TRACE_OOM
/* The OOM killer marks its victim: the victim's counters at the kill (the task the
 * tracepoint fires in is the one whose allocation failed). */
RAW_TRACEPOINT_PROBE(mark_victim)
{
#ifdef VMT_OOM_TASK_ARG
	u64 task = (u64)ctx->args[0];
	u32 tgid = vmt_task_tgid(task);
	u32 tid = vmt_task_tid(task);
	u64 mm = vmt_read_u64(task + VMT_OFF_TASK_MM);
#else
	/* before 6.7 the tracepoint passes only the victim's pid */
	u64 task = 0;
	u32 tgid = (u32)ctx->args[0], tid = tgid;
	u64 mm = 0;
#endif
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	if (!mm)
		mm = st->mm;
	struct vmt_event *e;
	if (!vmt_reserve(&e, st, 1, 0, 0))
		return 0;
	e->kind = VMT_KIND_OOM;
	struct mm_snap last = {
		.total_vm = st->total_vm,
		.hiwater_vm = st->hiwater_vm,
		.stack_vm = st->stack_vm,
	};
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	vmt_fill_counters(e, &last, &now, st->peak, mm);
	e->aux = e->pid;  /* the allocating task, before pid/tid name the victim */
	e->pid = tgid;
	e->tid = tid;
	if (task)
		bpf_probe_read_kernel_str(&e->comm, sizeof(e->comm), (void *)(task + VMT_OFF_TASK_COMM));
	vmt_submit(e);
	return 0;
}
#endif

/* --follow: a traced process forks; its child (not a new thread) is traced from here on,
 * before it runs. Raw tracepoint: the tracepoint's own fields name pids, not the tgid. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
	struct vmt_config *cfg = vmt_config();
	if (!cfg || !cfg->follow)
		return 0;
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	if (!targets.lookup(&tgid))
		return 0;
	u64 child = (u64)ctx->args[1];
	u32 child_tgid = vmt_task_tgid(child);
	if (child_tgid == 0 || child_tgid == tgid)
		return 0;  /* a thread: already covered by its process */
	struct target_state fresh = {};
	if (targets.insert(&child_tgid, &fresh) != 0) {
		count(VMT_CNT_TARGETS_FULL);
		return 0;
	}
	struct target_state *cst = targets.lookup(&child_tgid);
	struct vmt_event *e;
	if (!vmt_reserve(&e, cst, 1, 0, 0))
		return 0;
	e->kind = VMT_KIND_FORK;
	e->pid = child_tgid;
	e->tid = child_tgid;
	e->aux = tgid;
	vmt_submit(e);
	return 0;
}

#endif
