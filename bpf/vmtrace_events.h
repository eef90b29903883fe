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
};

/* Indexes into the per-CPU `counters` array. */
enum vmt_counter {
	VMT_CNT_EMITTED = 0,
	VMT_CNT_LOST = 1,       /* ring buffer full: record dropped */
	VMT_CNT_STACK_ERR = 2,  /* bpf_get_stackid failed */
	VMT_CNT_MAX = 4,
};

#endif
