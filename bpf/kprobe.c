/* vmtrace kprobe backend: the original design, for kernels with kprobes.
 *
 * vmtrace/kernel/probesites.py resolves, against the running kernel's kallsyms, the
 * functions that write total_vm (vm_stat_account, the brk growth path, the function
 * that completes an unmap) and the unmap entry point; vmtrace/session.py attaches
 * vmt_after_write as a kretprobe to the writers and vmt_before_unmap as a kprobe to the
 * unmap entry (total_vm as it is before hiwater_vm is latched and total_vm lowered).
 * Observations happen inside the mmap_lock hold, so the changes of one traced syscall
 * are merged into one record judged at its exit (see trace_core.h).
 */
#include <uapi/linux/ptrace.h>
#define VMT_MERGE_WITHIN_CALL 1
#include "trace_core.h"

int vmt_after_write(struct pt_regs *ctx)
{
	vmt_observe(ctx, vmt_current_mm());
	return 0;
}

int vmt_before_unmap(struct pt_regs *ctx)
{
	vmt_observe(ctx, vmt_current_mm());
	return 0;
}

#ifndef VMT_HAVE_EXIT_MMAP
/* kernels without the mmap:exit_mmap tracepoint (before 6.1): its first argument */
int vmt_exit_mmap(struct pt_regs *ctx)
{
	vmt_mm_exiting((u64)PT_REGS_PARM1(ctx));
	return 0;
}
#endif
