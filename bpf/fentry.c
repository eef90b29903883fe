/* vmtrace fentry backend: the kprobe backend's sites through BPF trampolines (cheaper,
 * no kretprobe instance limit). Functions must be in BTF; the session passes each
 * resolved name as a -D macro (VMT_FEXIT_0..5, VMT_FENTRY_UNMAP, VMT_CALL_0..5), chosen
 * from the fixed tables in vmtrace/kernel/probesites.py and checked to be an identifier,
 * never a string from the command line.
 */
#include "syscall_ctx.h"

/* One level of indirection so the -D names are expanded before bcc's macros paste them. */
#define VMT_AFTER(fn) KRETFUNC_PROBE(fn) { vmt_observe(vmt_current_mm()); return 0; }
#define VMT_BEFORE(fn) KFUNC_PROBE(fn) { vmt_observe(vmt_current_mm()); return 0; }
/* __x64_sys_*(const struct pt_regs *regs): regs is the task's user registers, found
 * without reading the argument (5.10's BTF declares its type only forward, and that
 * verifier then refuses the access); the return value follows the one argument. */
#define VMT_CALL(fn) KFUNC_PROBE(fn) { return vmt_call_enter(vmt_user_regs()); } KRETFUNC_PROBE(fn) { return vmt_call_return((s64)ctx[1]); }

#ifdef VMT_FEXIT_0
VMT_AFTER(VMT_FEXIT_0)
#endif
#ifdef VMT_FEXIT_1
VMT_AFTER(VMT_FEXIT_1)
#endif
#ifdef VMT_FEXIT_2
VMT_AFTER(VMT_FEXIT_2)
#endif
#ifdef VMT_FEXIT_3
VMT_AFTER(VMT_FEXIT_3)
#endif
#ifdef VMT_FEXIT_4
VMT_AFTER(VMT_FEXIT_4)
#endif
#ifdef VMT_FEXIT_5
VMT_AFTER(VMT_FEXIT_5)
#endif
#ifdef VMT_FENTRY_UNMAP
VMT_BEFORE(VMT_FENTRY_UNMAP)
#endif
#ifdef VMT_CALL_0
VMT_CALL(VMT_CALL_0)
#endif
#ifdef VMT_CALL_1
VMT_CALL(VMT_CALL_1)
#endif
#ifdef VMT_CALL_2
VMT_CALL(VMT_CALL_2)
#endif
#ifdef VMT_CALL_3
VMT_CALL(VMT_CALL_3)
#endif
#ifdef VMT_CALL_4
VMT_CALL(VMT_CALL_4)
#endif
#ifdef VMT_CALL_5
VMT_CALL(VMT_CALL_5)
#endif
