/* Building records in the rings: reserved in place (no per-CPU scratch a preempted program
 * could share), with the file part and the user stack filled only when a record has them. */
#ifndef VMTRACE_EMIT_H
#define VMTRACE_EMIT_H

#include "maps.h"

#define VMT_SIZE_EVENT (sizeof(struct vmt_event))
#define VMT_SIZE_FILE (sizeof(struct vmt_event) + sizeof(struct vmt_file))
#define VMT_SIZE_STACK (VMT_SIZE_FILE + sizeof(struct vmt_user_stack))

/* The struct file behind descriptor `fd` of the current task, or 0. */
static __always_inline u64 vmt_file_of_fd(s64 fd)
{
	if (fd < 0)
		return 0;
	u64 files = vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_FILES);
	if (!files)
		return 0;
	u64 fdt = vmt_read_u64(files + VMT_OFF_FILES_FDT);
	u32 max_fds = vmt_read_u32(fdt + VMT_OFF_FDTABLE_MAX_FDS);
	if ((u64)fd >= max_fds)
		return 0;
	u64 fds = vmt_read_u64(fdt + VMT_OFF_FDTABLE_FD);
	return vmt_read_u64(fds + (u64)fd * 8);
}

/* The path of `file` as its dentries name it, innermost component first, crossing mount
 * points up to the task's root (what d_path would print, without a lock). */
static __always_inline void vmt_fill_file(struct vmt_file *f, u64 file)
{
	f->ino = 0;
	f->dev = 0;
	f->depth = 0;
	f->truncated = 0;
	f->pad = 0;
	if (!file)
		return;
	u64 inode = vmt_read_u64(file + VMT_OFF_FILE_INODE);
	f->ino = vmt_read_u64(inode + VMT_OFF_INODE_INO);
	f->dev = vmt_read_u32(vmt_read_u64(inode + VMT_OFF_INODE_SB) + VMT_OFF_SB_DEV);
	u64 dentry = vmt_read_u64(file + VMT_OFF_FILE_DENTRY);
	u64 vfsmnt = vmt_read_u64(file + VMT_OFF_FILE_MNT);
	u64 mnt = vfsmnt - VMT_OFF_MOUNT_MNT;  /* struct mount embeds the vfsmount */
	/* The path as the task sees it: up to its root (a chroot, a container's), as d_path
	 * does, not up to the root of every mount. */
	u64 fs = vmt_read_u64(bpf_get_current_task() + VMT_OFF_TASK_FS);
	u64 root_dentry = vmt_read_u64(fs + VMT_OFF_FS_ROOT_DENTRY);
	u64 root_mnt = vmt_read_u64(fs + VMT_OFF_FS_ROOT_MNT);
	/* The count lives in the record, not in a register: the verifier then sees one state
	 * per iteration instead of one per path through the walk. */
	for (int i = 0; i < VMT_PATH_DEPTH + 4; i++) {
		if (dentry == root_dentry && vfsmnt == root_mnt)
			break;
		if (dentry == vmt_read_u64(vfsmnt + VMT_OFF_VFSMOUNT_ROOT)) {
			u64 up = vmt_read_u64(mnt + VMT_OFF_MOUNT_PARENT);
			if (up == mnt || up == 0)
				break;  /* the root of the mount tree */
			dentry = vmt_read_u64(mnt + VMT_OFF_MOUNT_MOUNTPOINT);
			mnt = up;
			vfsmnt = mnt + VMT_OFF_MOUNT_MNT;
			continue;
		}
		u64 parent = vmt_read_u64(dentry + VMT_OFF_DENTRY_PARENT);
		if (parent == dentry || parent == 0)
			break;
		u32 depth = f->depth;
		if (depth >= VMT_PATH_DEPTH) {
			f->truncated = 1;
			break;
		}
		u64 name = vmt_read_u64(dentry + VMT_OFF_DENTRY_NAME);
		bpf_probe_read_kernel_str(&f->names[depth & (VMT_PATH_DEPTH - 1)], VMT_NAME_LEN,
					  (void *)name);
		f->depth = depth + 1;
		dentry = parent;
	}
}

/* The user stack from sp upwards, chunk by chunk: a chunk past the top of the stack
 * mapping fails, and what was read before it is kept. */
static __always_inline void vmt_fill_stack(struct vmt_user_stack *s, struct vmt_regs *r)
{
	s->ip = r->ip;
	s->sp = r->sp;
	s->bp = r->bp;
	s->pad = 0;
	s->len = 0;
	for (int i = 0; i < VMT_STACK_BYTES / VMT_STACK_CHUNK; i++) {
		if (bpf_probe_read_user(&s->data[i * VMT_STACK_CHUNK], VMT_STACK_CHUNK,
					(void *)(r->sp + i * VMT_STACK_CHUNK)) != 0)
			break;
		s->len += VMT_STACK_CHUNK;
	}
	if (s->len == 0)
		count(VMT_CNT_STACK_ERR);
}

/* A record that found no room. A grow/shrink change is not lost: its caller tallies it. */
static __always_inline int vmt_lost(struct target_state *st, int is_vital)
{
	if (!is_vital)
		return 0;
	count(VMT_CNT_LOST_VITAL);
	if (st)
		__sync_fetch_and_add(&st->lost, 1);
	return 0;
}

/* A record in the right ring, its optional parts filled, in *out: 1; or 0 when the ring is
 * full (a vital record is then counted as lost, for the process too) or the trace is
 * stopping. `stack_regs` non-NULL: capture the user stack. Callers test the result, never
 * the pointer (see below). */
static __always_inline int vmt_reserve(struct vmt_event **out, struct target_state *st,
				       int is_vital, u64 file, struct vmt_regs *stack_regs)
{
	struct vmt_event *e;
	u32 flags = 0;
	struct vmt_config *cfg = vmt_config();
	if (cfg && cfg->stopped)
		return 0;
#ifdef VMT_NO_STACKS
	stack_regs = 0;
#endif
	/* Each reservation is checked once, where it is made: a second test of a pointer
	 * already known non-null leaves a path older verifiers (6.1) think holds the
	 * reservation unreleased. */
	if (is_vital && stack_regs && stack_regs->ok) {
		e = vital.ringbuf_reserve(VMT_SIZE_STACK);
		if (!e)
			return vmt_lost(st, is_vital);
		vmt_fill_file((struct vmt_file *)(e + 1), file);
		vmt_fill_stack((struct vmt_user_stack *)((void *)(e + 1) + sizeof(struct vmt_file)),
			       stack_regs);
		flags = VMT_FLAG_HAS_FILE | VMT_FLAG_HAS_STACK;
	} else if (file) {
		if (is_vital)
			e = vital.ringbuf_reserve(VMT_SIZE_FILE);
		else
			e = events.ringbuf_reserve(VMT_SIZE_FILE);
		if (!e)
			return vmt_lost(st, is_vital);
		vmt_fill_file((struct vmt_file *)(e + 1), file);
		flags = VMT_FLAG_HAS_FILE;
	} else {
		if (is_vital)
			e = vital.ringbuf_reserve(VMT_SIZE_EVENT);
		else
			e = events.ringbuf_reserve(VMT_SIZE_EVENT);
		if (!e)
			return vmt_lost(st, is_vital);
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->flags = flags | (is_vital ? VMT_FLAG_VITAL : 0);
	e->ts_ns = bpf_ktime_get_ns();
	u64 id = vmt_current_ids();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->rss_member = -1;
	e->syscall_nr = -1;
	if (st) {
		e->lost = st->lost;
		e->tallied = st->tallied;
		e->tallied_grown = st->tallied_grown;
		e->tallied_shrunk = st->tallied_shrunk;
	}
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	*out = e;
	return 1;
}

/* Vital records wake the reader at once; the others only every VMT_WAKEUP_EVERY-th on
 * this CPU, once the ring holds enough to be worth a wakeup (the reader polls on a short
 * timeout anyway), which spares the traced task an IPI per record. */
static __always_inline void vmt_submit(struct vmt_event *e)
{
	u64 wake = BPF_RB_NO_WAKEUP;
	if (e->flags & VMT_FLAG_VITAL) {
		wake = BPF_RB_FORCE_WAKEUP;
	} else {
		int idx = VMT_CNT_SENT_CHANGES;
		u64 *sent = counters.lookup(&idx);
		if (sent && ((*sent)++ % VMT_WAKEUP_EVERY) == 0)
			wake = BPF_RB_FORCE_WAKEUP;
	}
	events.ringbuf_submit(e, wake);
}

static __always_inline void vmt_fill_rss(struct vmt_event *e, u64 mm)
{
	struct mm_rss rss = {};
	vmt_read_rss_kinds(mm, &rss);
	e->rss_file = rss.file;
	e->rss_anon = rss.anon;
	e->rss_shmem = rss.shmem;
	e->hiwater_rss = vmt_read_u64(mm + VMT_OFF_MM_HIWATER_RSS);
}

/* The counters a record reports: the change's before and after, and the mm's break (read
 * with `after` when it was read from the mm, else now). */
static __always_inline void vmt_fill_vm(struct vmt_event *e, struct mm_snap *before,
					struct mm_snap *after, u64 peak_before, u64 mm)
{
	e->mm_id = mm;
	e->total_vm_before = before->total_vm;
	e->hiwater_vm_before = before->hiwater_vm;
	e->stack_vm_before = before->stack_vm;
	e->total_vm_after = after->total_vm;
	e->hiwater_vm_after = after->hiwater_vm;
	e->stack_vm_after = after->stack_vm;
	e->peak_before = peak_before;
	e->brk_after = after->brk ? after->brk : vmt_read_u64(mm + VMT_OFF_MM_BRK);
}

/* The same, with the RSS read from the mm now. */
static __always_inline void vmt_fill_counters(struct vmt_event *e, struct mm_snap *before,
					      struct mm_snap *after, u64 peak_before, u64 mm)
{
	vmt_fill_vm(e, before, after, peak_before, mm);
	vmt_fill_rss(e, mm);
}

static __always_inline void vmt_fill_call(struct vmt_event *e, struct vmt_regs *r)
{
	e->syscall_nr = (s32)r->nr;
	if (!r->ok)
		e->flags |= VMT_FLAG_NO_REGS;
	__builtin_memcpy(e->args, r->args, sizeof(e->args));
}

#endif
