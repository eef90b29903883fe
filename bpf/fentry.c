/* vmtrace fentry backend: the kprobe backend's sites through BPF trampolines (cheaper,
 * no kretprobe instance limit). Functions must be in BTF; the session passes each
 * resolved name as a -D macro (VMT_FEXIT_0..5, VMT_FENTRY_UNMAP), chosen from the fixed
 * table in vmtrace/kernel/probesites.py and checked to be an identifier, never a string
 * from the command line.
 */
#define VMT_MERGE_WITHIN_CALL 1
#include "trace_core.h"

/* One level of indirection so the -D names are expanded before bcc's macros paste them. */
#define VMT_AFTER(fn) KRETFUNC_PROBE(fn) { vmt_observe(ctx, vmt_current_mm()); return 0; }
#define VMT_BEFORE(fn) KFUNC_PROBE(fn) { vmt_observe(ctx, vmt_current_mm()); return 0; }

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
