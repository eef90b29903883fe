/* vmtrace ABI: the records every BPF backend sends to user space.
 *
 * The Python mirror is vmtrace/abi.py ("keep aligned with bpf/vmtrace_events.h");
 * tests/unit/test_abi.py checks its sizes and field offsets against this file, and
 * tests/integration checks them against the sizes the compiler reports.
 * Change a field here only together with the mirror.
 *
 * A record is a struct vmt_event, followed by a struct vmt_file when VMT_FLAG_HAS_FILE
 * is set, followed by a struct vmt_user_stack when VMT_FLAG_HAS_STACK is set (a record
 * with a stack always carries the file part too, filled or not).
 */
#ifndef VMTRACE_EVENTS_H
#define VMTRACE_EVENTS_H

#define VMT_COMM_LEN 16
#define VMT_NARGS 6
#define VMT_PATH_DEPTH 16      /* path components kept, innermost first */
#define VMT_NAME_LEN 64        /* bytes kept of each component, NUL included */
#define VMT_STACK_CHUNK 512    /* user stack bytes are read in chunks of this size */
#ifndef VMT_STACK_BYTES
#define VMT_STACK_BYTES 16384  /* user stack bytes kept from the stack pointer up */
#endif

/* What the kernel saw. Whether a change is a peak, a latch, a grow or a shrink is decided
 * in user space, from the absolute values every record carries; the kernel side only uses
 * it to pick the ring and to decide whether to capture a stack. */
enum vmt_kind {
	/* total_vm or hiwater_vm changed in one of the calls vmtrace decodes (mmap, munmap,
	 * brk, mremap, shmat, shmdt) */
	VMT_KIND_SYSCALL = 1,
	/* changed elsewhere: a page fault (stack growth, syscall_nr == -1) or another syscall */
	VMT_KIND_OTHER = 2,
	/* an exec installed a new mm: the process's peak starts over (aux: the thread that
	 * called exec, which becomes the leader) */
	VMT_KIND_EXEC = 3,
	/* the process's last thread exited; counters are the last ones accounted for */
	VMT_KIND_EXIT = 4,
	/* first sight of a target's mm by the probes: its values at that moment */
	VMT_KIND_BASELINE = 5,
	/* a traced process forked a child that is now traced too (--follow); aux: the parent */
	VMT_KIND_FORK = 6,
	/* VmHWM = max(hiwater_rss, rss) passed the last HWM record by hwm_step_pages */
	VMT_KIND_HWM = 7,
	/* the OOM killer chose this process (tid: the victim thread; aux: the tgid of the
	 * task whose allocation failed); counters are the victim's at that moment */
	VMT_KIND_OOM = 8,
};

/* flags */
#define VMT_FLAG_HAS_RET    (1u << 1) /* ret is the call's return value */
#define VMT_FLAG_HAS_AREA   (1u << 2) /* area_* hold the last free range the kernel found */
#define VMT_FLAG_HAS_FILE   (1u << 3) /* a struct vmt_file follows */
#define VMT_FLAG_HAS_STACK  (1u << 4) /* a struct vmt_user_stack follows the file part */
#define VMT_FLAG_NO_REGS    (1u << 5) /* the task's user registers could not be read */
#define VMT_FLAG_VITAL      (1u << 6) /* sent on the `vital` ring: the kernel saw a peak or latch */

struct vmt_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 mm_id;            /* identity of the address space (two images of a pid differ) */
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 kind;             /* enum vmt_kind */
	__s32 syscall_nr;       /* x86_64 number; -1 outside any syscall (page fault) */
	__s64 ret;              /* with VMT_FLAG_HAS_RET */
	__u64 args[VMT_NARGS];
	/* mm_struct counters, in pages, read at BTF offsets */
	__u64 total_vm_before;
	__u64 total_vm_after;
	__u64 hiwater_vm_before;
	__u64 hiwater_vm_after;
	__u64 stack_vm_before;
	__u64 stack_vm_after;
	__u64 peak_before;      /* the kernel side's max(total_vm, hiwater_vm) for this mm before */
	__u64 brk_after;        /* mm->brk after the change */
	__u64 area_addr;        /* with VMT_FLAG_HAS_AREA: what vm_unmapped_area returned... */
	__u64 area_len;         /* ...for a request of this length, during the change */
	/* RSS by kind (pages, as /proc counts them: VmRSS is their sum) and the latched
	 * hiwater_rss, read after the change */
	__u64 rss_file;
	__u64 rss_anon;
	__u64 rss_shmem;
	__u64 hiwater_rss;
	__u64 hwm_before;       /* HWM: VmHWM (pages) of the previous HWM record */
	__u64 aux;              /* FORK: parent tgid; EXEC: the tid that called exec; EXIT: the
				 * exit code (status << 8 | signal); OOM: see VMT_KIND_OOM;
				 * BASELINE: the process's host tgid (pid is vmtrace's
				 * namespace's, which may be another) */
	/* grow/shrink changes of this process counted, not sent, while the reader was behind
	 * (so far), and the pages they mapped and unmapped */
	__u64 tallied;
	__u64 tallied_grown;
	__u64 tallied_shrunk;
	__u32 folded_rises;     /* --min-delta: VmPeak rises kept back since the last one sent */
	__s32 rss_member;       /* HWM: counter that grew (0 file, 1 anon, 3 shmem); else -1 */
	__u32 flags;            /* VMT_FLAG_* */
	__u32 lost;             /* records of this process the rings had no room for, so far */
	char comm[VMT_COMM_LEN];
};

/* The file a change maps (mmap of an fd) or the new image (exec), named by the kernel at
 * the change from its dentries, so that closing the fd, splitting the mapping or reusing
 * the fd number cannot change the name. */
struct vmt_file {
	__u64 ino;
	__u32 dev;              /* the kernel's dev_t: major << 20 | minor */
	__u32 depth;            /* components filled in names[], innermost first */
	__u32 truncated;        /* the path had more than VMT_PATH_DEPTH components */
	__u32 pad;
	char names[VMT_PATH_DEPTH][VMT_NAME_LEN];
};

/* The user registers an unwinder starts from, and the user stack from sp upwards. */
struct vmt_user_stack {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 len;              /* bytes of data[] that were read */
	__u32 pad;
	__u8 data[VMT_STACK_BYTES];
};

/* Filters and thresholds, written by user space into the one-entry `config` array.
 * No user-supplied string ever becomes C source: names and ids travel in maps. */
struct vmt_config {
	__u64 min_delta_pages;  /* non-zero: a peak is sent once VmPeak rose this much since the last */
	__u64 hwm_step_pages;   /* HWM records each time VmHWM grows by this much; 0: none */
	__u64 cgroup_id;        /* non-zero: every process in the `cgroup_filter` cgroup or below */
	__u32 follow;           /* children of traced processes are traced */
	__u32 all;              /* every process with a user address space */
	__u32 comm_filter;      /* processes whose comm is in the `comms` map */
	__u32 self_tgid;        /* vmtrace itself: never auto-added (it would trace its own work) */
	__u32 stopped;          /* set at shutdown: nothing more is sent, so the rings can be drained */
};

/* Indexes into the per-CPU `counters` array. */
enum vmt_counter {
	VMT_CNT_LOST_CHANGES = 0, /* unused: a grow/shrink change that finds no room is tallied */
	VMT_CNT_LOST_VITAL = 1,   /* `vital` ring full: a peak, latch or lifecycle record dropped */
	VMT_CNT_STACK_ERR = 2,    /* the user stack could not be read */
	VMT_CNT_FILTERED = 3,     /* changes not sent: below --min-delta */
	VMT_CNT_TARGETS_FULL = 4, /* a process to trace did not fit the `targets` map */
	VMT_CNT_SENT_CHANGES = 5, /* grow/shrink records sent: paces the reader's wakeups */
	VMT_CNT_CALLS_FULL = 6,   /* kprobe/fentry: a call did not fit the `inflight` map, so its
				   * changes were judged one by one, not merged */
	VMT_CNT_TALLIED = 7,      /* grow/shrink changes counted in their process's state instead of
				   * sent: the `events` ring had no room */
	VMT_CNT_MAX = 8,
};

#endif
