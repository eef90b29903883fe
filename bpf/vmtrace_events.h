/* vmtrace ABI: the records every BPF backend sends to user space.
 *
 * The Python mirror is vmtrace/abi.py ("keep aligned with bpf/vmtrace_events.h");
 * tests/unit/test_abi.py checks its size and field offsets against this file, and
 * tests/integration checks them against the size the compiler reports.
 * Change a field here only together with the mirror, and add fields at the end.
 */
#ifndef VMTRACE_EVENTS_H
#define VMTRACE_EVENTS_H

#define VMT_COMM_LEN 16
#define VMT_NARGS 6

/* What the kernel saw. The classification (peak, latch, grow, shrink) is made in
 * user space by the engine, from the absolute values carried by every record. */
enum vmt_kind {
	/* total_vm or hiwater_vm changed inside a traced syscall; args and ret are known */
	VMT_KIND_SYSCALL = 1,
	/* changed outside a traced syscall: a page fault (stack growth, nr == -1)
	 * or a syscall we do not trace (nr read from the task's pt_regs) */
	VMT_KIND_OTHER = 2,
	/* execve succeeded: the process has a new mm, its peak starts over */
	VMT_KIND_EXEC = 3,
	/* the traced mm is being torn down (last thread exited) */
	VMT_KIND_EXIT = 4,
	/* first sight of a target's mm by the probes: its values at that moment */
	VMT_KIND_BASELINE = 5,
	/* a traced process forked a child that is now traced too (--follow); args[0] = parent */
	VMT_KIND_FORK = 6,
	/* VmHWM = max(hiwater_rss, rss) passed the last HWM record by hwm_step_pages */
	VMT_KIND_HWM = 7,
};

/* flags */
#define VMT_FLAG_NEW_PEAK   (1u << 0) /* total_vm_after exceeds every value seen before */
#define VMT_FLAG_HAS_RET    (1u << 1) /* ret holds the syscall's return value */
#define VMT_FLAG_MERGED     (1u << 2) /* several changes inside one syscall were merged */

struct vmt_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 kind;             /* enum vmt_kind */
	__s32 syscall_nr;       /* x86_64 number; -1 outside any syscall (page fault) */
	__s64 ret;
	__u64 args[VMT_NARGS];
	/* mm_struct counters, in pages, read at BTF offsets */
	__u64 total_vm_before;
	__u64 total_vm_after;
	__u64 hiwater_vm_before;
	__u64 hiwater_vm_after;
	__u64 stack_vm_before;
	__u64 stack_vm_after;
	__u64 peak_before;      /* max(total_vm, hiwater_vm) ever seen for this mm before */
	__u64 user_sp;          /* pt_regs->sp of the task (fault address proxy for stack growth) */
	__u64 user_ip;
	__s32 stack_id;         /* user stack in the `stacks` map, or < 0 */
	__u32 flags;            /* VMT_FLAG_* */
	char comm[VMT_COMM_LEN];
	/* RSS (file + anon + shmem pages, as /proc counts them) and the latched hiwater_rss,
	 * read after the change; for HWM records rss_before is the RSS of the previous one */
	__u64 rss_before;
	__u64 rss_after;
	__u64 hiwater_rss;
	__s32 rss_member;       /* HWM: counter that grew (0 file, 1 anon, 3 shmem); else -1 */
	__u32 cpu;              /* CPU that sent the record */
};

/* Filters and thresholds, written by user space into the one-entry `config` array.
 * No user-supplied string ever becomes C source: names and ids travel in maps. */
struct vmt_config {
	__u64 min_delta_pages;  /* non-zero: only peaks of at least this, latches, lifecycle */
	__u64 hwm_step_pages;   /* HWM records each time VmHWM grows by this much; 0: none */
	__u64 cgroup_id;        /* non-zero: every process in this cgroup (v2) or below */
	__u32 cgroup_level;
	__u32 follow;           /* children of traced processes are traced */
	__u32 all;              /* every process with a user address space */
	__u32 comm_filter;      /* processes whose comm is in the `comms` map */
	__u32 self_tgid;        /* vmtrace itself: never auto-added (it would trace its own work) */
	__u32 stopped;          /* set at shutdown: nothing more is sent, so the ring can be drained */
};

/* Indexes into the per-CPU `counters` array. */
enum vmt_counter {
	VMT_CNT_EMITTED = 0,
	VMT_CNT_LOST = 1,       /* ring buffer full: record dropped */
	VMT_CNT_STACK_ERR = 2,  /* bpf_get_stackid failed */
	VMT_CNT_FILTERED = 3,   /* changes not sent: below --min-delta */
	VMT_CNT_MAX = 4,
};

#endif
