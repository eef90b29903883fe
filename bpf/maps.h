/* The state every backend shares: which processes are traced, the filters, the two rings
 * and the drop counters. */
#ifndef VMTRACE_MAPS_H
#define VMTRACE_MAPS_H

#include "mm_common.h"

#ifndef VMT_MAX_TARGETS
#define VMT_MAX_TARGETS 1024
#endif

struct vmt_comm_key {
	char comm[VMT_COMM_LEN];
};

BPF_HASH(targets, u32, struct target_state, VMT_MAX_TARGETS);
BPF_ARRAY(config, struct vmt_config, 1);
BPF_HASH(comms, struct vmt_comm_key, u8, 64);
/* Two rings, so that a flood of grow/shrink records can never push out the records that
 * explain VmPeak: `vital` carries peaks, latches, HWM and lifecycle records (with their
 * stacks), `events` everything else. */
BPF_RINGBUF_OUTPUT(events, VMT_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(vital, VMT_VITAL_PAGES);
BPF_PERCPU_ARRAY(counters, u64, VMT_CNT_MAX);
#ifdef VMT_CGROUP_FILTER
BPF_CGROUP_ARRAY(cgroup_filter, 1);  /* --cgroup: the directory user space opened */
#endif

static __always_inline void count(int idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

static __always_inline struct vmt_config *vmt_config(void)
{
	int zero = 0;
	return config.lookup(&zero);
}

/* The traced state of process `tgid`, creating it when an auto-add rule (--all, --cgroup,
 * --comm) covers the current task; NULL when the process is not traced. */
static __always_inline struct target_state *target_of(u32 tgid)
{
	struct target_state *st = targets.lookup(&tgid);
	if (st)
		return st;
	struct vmt_config *cfg = vmt_config();
	if (!cfg || !(cfg->all || cfg->cgroup_id || cfg->comm_filter))
		return 0;
	if (tgid == cfg->self_tgid)
		return 0;
	if (vmt_current_mm() == 0)
		return 0;  /* kernel threads have no address space to explain */
	int covered = cfg->all;
#ifdef VMT_CGROUP_FILTER
	/* the cgroup is held by its directory's fd, not by a level counted from a root: the
	 * same under any cgroup namespace */
	if (!covered && cfg->cgroup_id)
		covered = cgroup_filter.check_current_task(0) == 1;
#endif
	if (!covered && cfg->comm_filter) {
		struct vmt_comm_key key = {};
		bpf_get_current_comm(&key.comm, sizeof(key.comm));
		covered = comms.lookup(&key) != 0;
	}
	if (!covered)
		return 0;
	struct target_state fresh = {};
	if (targets.insert(&tgid, &fresh) != 0 && !targets.lookup(&tgid)) {
		count(VMT_CNT_TARGETS_FULL);
		return 0;
	}
	return targets.lookup(&tgid);
}

#endif
