/* Turning a traced mm's counters into records: first sight (baseline), an exec's new
 * image, and a change judged once its writer has completed it.
 *
 * Only the task that changed the counters commits them: the tracepoint backend commits
 * at its writer's lock release, the kprobe/fentry backends inside the writing functions
 * (merged per decoded syscall, judged at the syscall's return). Readers never commit.
 */
#ifndef VMTRACE_OBSERVE_H
#define VMTRACE_OBSERVE_H

#include "emit.h"

#define VMT_MAP_ANONYMOUS 0x20

static __always_inline void vmt_accept(struct target_state *st, u64 mm, struct mm_snap *now,
				       int with_peak)
{
	st->mm = mm;
	st->total_vm = now->total_vm;
	st->hiwater_vm = now->hiwater_vm;
	st->stack_vm = now->stack_vm;
	if (with_peak)
		st->peak = vmt_max(st->peak, vmt_max(now->total_vm, now->hiwater_vm));
}

static __always_inline u64 vmt_vmhwm(u64 mm)
{
	return vmt_max(vmt_read_rss(mm), vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS));
}

/* `mm` is not the one the state describes: an exec's new image (kept quiet until the
 * exec completes), or the first sight of the process (a baseline record). */
static __always_inline void vmt_new_mm(struct target_state *st, u64 mm, s64 nr)
{
	struct mm_snap now = {};
	vmt_read_mm(mm, &now);
	if (vmt_exec_call(nr)) {
		if (!st->in_exec) {
			st->exec_total_vm = st->total_vm;
			st->exec_hiwater_vm = st->hiwater_vm;
			st->exec_stack_vm = st->stack_vm;
			st->exec_peak = st->peak;
			st->in_exec = 1;
		}
		st->peak = 0;
		vmt_accept(st, mm, &now, 1);
		return;
	}
	st->peak = 0;
	st->in_exec = 0;
	vmt_accept(st, mm, &now, 1);
	st->reported_peak = st->peak;
	st->hwm_sent = vmt_vmhwm(mm);
	struct vmt_event *e;
	if (!vmt_reserve(&e, st, 1, 0, 0))
		return;
	e->kind = VMT_KIND_BASELINE;
	e->aux = bpf_get_current_pid_tgid() >> 32;
	vmt_fill_counters(e, &now, &now, st->peak, mm);
	vmt_submit(e);
}

/* The reader is behind: the `events` ring has no room. A grow/shrink change is then
 * counted, with its size, in its process's state (each record of the process carries the
 * totals so far) instead of sent: nothing is dropped unaccounted for, and the reader works
 * through the ring as fast as it can. Peaks and latches have a ring of their own and are
 * never tallied. Other CPUs may tally for the same process at once. */
static __always_inline void vmt_tally(struct target_state *st, struct vmt_config *cfg,
				      struct mm_snap *before, struct mm_snap *after)
{
	if (cfg && cfg->stopped)
		return;  /* the trace is ending: nothing more is accounted for */
	st->tally_run++;
	__sync_fetch_and_add(&st->tallied, 1);
	if (after->total_vm > before->total_vm)
		__sync_fetch_and_add(&st->tallied_grown, after->total_vm - before->total_vm);
	else
		__sync_fetch_and_add(&st->tallied_shrunk, before->total_vm - after->total_vm);
	count(VMT_CNT_TALLIED);
}

/* Once the `events` ring has been found full, a process's grow/shrink changes are tallied
 * without trying it (nor reading the call) until every VMT_TALLY_RETRY-th: a reader that is
 * behind stays behind for many changes, and the tries cost the traced task. */
#define VMT_TALLY_RETRY 16

/* A change from `before` to `after`, completed by the current task in call `call` (NULL:
 * the task's registers say, read only if the change is sent): judged against the peak
 * `peak_before`, sent to the ring it belongs to, and accounted for. */
static __always_inline void vmt_commit(struct target_state *st, u64 mm, struct mm_snap *before,
				       struct mm_snap *after, u64 peak_before,
				       struct vmt_regs *call, s64 ret, int has_ret,
				       struct vmt_area *area)
{
	struct vmt_config *cfg = vmt_config();
	u64 min_delta = cfg ? cfg->min_delta_pages : 0;
	int latch = after->hiwater_vm != before->hiwater_vm;
	int rise = after->total_vm > peak_before;
	int vital = latch || rise;
	u32 folded = 0;
	if (rise && min_delta) {
		/* VmPeak has to rise by min_delta since the last peak sent, however small the
		 * steps, so that slow growth is still seen */
		if (after->total_vm >= st->reported_peak + min_delta) {
			folded = st->folded;
			st->folded = 0;
			st->reported_peak = after->total_vm;
		} else {
			st->folded++;
			vital = latch;
		}
	}
	vmt_accept(st, mm, after, 0);
	st->peak = vmt_max(peak_before, vmt_max(after->total_vm, after->hiwater_vm));
	if (!vital && min_delta) {
		count(VMT_CNT_FILTERED);
		return;  /* nothing else is read for a change kept back */
	}
	if (!vital && st->tally_run % VMT_TALLY_RETRY != 0) {
		vmt_tally(st, cfg, before, after);
		return;
	}
	struct vmt_regs regs = {};
	struct vmt_regs *r = call;
	if (!r) {
		if (vital)
			vmt_read_regs(vmt_user_regs(), &regs);
		else
			vmt_read_call(vmt_user_regs(), &regs);  /* no stack: sp and bp unread */
		r = &regs;
	}
	u64 file = 0;
	if (r->nr == NR_MMAP && !(r->args[3] & VMT_MAP_ANONYMOUS))
		file = vmt_file_of_fd((s64)(s32)r->args[4]);
	struct vmt_event *e;
	if (!vmt_reserve(&e, st, vital, file, vital ? r : 0)) {
		/* no room: nothing more is read (the RSS kept is the last change sent's) */
		if (!vital)
			vmt_tally(st, cfg, before, after);
		return;
	}
	if (!vital)
		st->tally_run = 0;
	struct mm_rss rss = {};
	vmt_read_rss_kinds(mm, &rss);
	st->rss_file = rss.file;
	st->rss_anon = rss.anon;
	st->rss_shmem = rss.shmem;
	/* The counters' snapshot has hiwater_rss and the break, except when the change is a
	 * merged call's, judged at its return: they may have moved since its last change
	 * (brk() sets the break after the mapping grew). */
	if (call) {
		after->hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
		after->brk = 0;
	}
	st->hiwater_rss = after->hiwater_rss;
	e->kind = vmt_decoded_call(r->nr) ? VMT_KIND_SYSCALL : VMT_KIND_OTHER;
	vmt_fill_vm(e, before, after, peak_before, mm);
	e->rss_file = st->rss_file;  /* just read for the state */
	e->rss_anon = st->rss_anon;
	e->rss_shmem = st->rss_shmem;
	e->hiwater_rss = st->hiwater_rss;
	vmt_fill_call(e, r);
	e->folded_rises = folded;
	if (has_ret) {
		e->ret = ret;
		e->flags |= VMT_FLAG_HAS_RET;
	}
	if (area && area->seen) {
		e->area_addr = area->addr;
		e->area_len = area->len;
		e->flags |= VMT_FLAG_HAS_AREA;
	}
	vmt_submit(e);
}

#endif
