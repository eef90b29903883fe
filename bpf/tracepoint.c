/* vmtrace tracepoint backend: works without kprobes or BPF trampolines.
 *
 * Every writer of mm->total_vm and mm->hiwater_vm holds mmap_lock for writing, and the
 * mmap_lock_released tracepoint fires before the lock is dropped, so comparing the
 * counters with their last accounted values at each release sees every change, one whole
 * lock hold at a time, including those no syscall makes (stack growth in a page fault).
 */
#include <uapi/linux/ptrace.h>
#include "trace_core.h"

TRACEPOINT_PROBE(mmap_lock, mmap_lock_released)
{
	vmt_observe(args, (u64)args->mm);
	return 0;
}
