/* vmtrace kprobe backend: the original design, for kernels with kprobes.
 *
 * vmtrace/kernel/probesites.py resolves, against the running kernel's kallsyms, the
 * functions that write total_vm (vm_stat_account, the brk growth path, the function
 * that completes an unmap) and the unmap entry point; vmtrace/session.py attaches
 * vmt_after_write as a kretprobe to the writers, vmt_before_unmap as a kprobe to the
 * unmap entry (total_vm as it is before hiwater_vm is latched and total_vm lowered), and
 * vmt_call_entry / vmt_call_exit to the decoded calls' syscall functions.
 */
#include <uapi/linux/ptrace.h>
#include "syscall_ctx.h"

int vmt_after_write(struct pt_regs *ctx)
{
	vmt_observe(vmt_current_mm());
	return 0;
}

int vmt_before_unmap(struct pt_regs *ctx)
{
	vmt_observe(vmt_current_mm());
	return 0;
}

/* __x64_sys_*(const struct pt_regs *regs): the task's user registers */
int vmt_call_entry(struct pt_regs *ctx)
{
	return vmt_call_enter((u64)PT_REGS_PARM1(ctx));
}

int vmt_call_exit(struct pt_regs *ctx)
{
	return vmt_call_return((s64)PT_REGS_RC(ctx));
}
