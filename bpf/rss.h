/* VmHWM records (--hwm-step): RSS counters change in page faults (mostly without
 * mmap_lock) and in unmaps; kmem:rss_stat fires on each change. Raw: args[0] is the mm
 * (the event's mm_id is a keyed hash), args[1] the counter. The counters read are the
 * shared values /proc reads, so each record's VmHWM is what /proc/PID/status would have
 * said at that moment. */
#ifndef VMTRACE_RSS_H
#define VMTRACE_RSS_H

#include "observe.h"

#ifdef VMT_TRACE_RSS
/* VmHWM went down (clear_refs): where user space says HWM records start again. A map of
 * its own, so that user space never writes a traced process's state back stale. */
BPF_HASH(hwm_resets, u32, u64, 1024);

RAW_TRACEPOINT_PROBE(rss_stat)
{
	u64 id = vmt_current_ids();
	u32 tgid = id >> 32;
	struct target_state *st = targets.lookup(&tgid);
	if (!st)
		return 0;
	u64 mm = (u64)ctx->args[0];
	if (mm == 0 || st->mm != mm || mm != vmt_current_mm())
		return 0;
	struct vmt_config *cfg = vmt_config();
	if (!cfg || cfg->hwm_step_pages == 0)
		return 0;
	u64 *reset = hwm_resets.lookup(&tgid);
	if (reset) {
		st->hwm_sent = *reset;
		hwm_resets.delete(&tgid);
	}
	u64 rss = vmt_read_rss(mm);
	u64 hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
	u64 hwm = vmt_max(rss, hiwater_rss);
	if (hwm < st->hwm_sent + cfg->hwm_step_pages)
		return 0;
	u64 hwm_before = st->hwm_sent;
	st->hwm_sent = hwm;
	struct vmt_regs r = {};
	vmt_read_regs(vmt_user_regs(), &r);
	struct vmt_event *e;
	if (!vmt_reserve(&e, st, 1, 0, &r))
		return 0;
	e->kind = VMT_KIND_HWM;
	struct mm_snap last = {
		.total_vm = st->total_vm,
		.hiwater_vm = st->hiwater_vm,
		.stack_vm = st->stack_vm,
	};
	vmt_fill_counters(e, &last, &last, st->peak, mm);
	vmt_fill_call(e, &r);
	e->hwm_before = hwm_before;
	e->rss_member = (s32)ctx->args[1];
	vmt_submit(e);
	return 0;
}
#endif

#endif
