/* C shim for the Swift loader: libbpf's LIBBPF_OPTS structs, its variadic
 * print callback and a netlink filter dump, behind plain-argument functions.
 * Every function returns 0 or a negative errno unless it says otherwise. */
#ifndef CXLBMC_SHIM_H
#define CXLBMC_SHIM_H

#include <stddef.h>
#include <linux/types.h>

struct bpf_object;
struct bpf_program;
struct bpf_link;

/* Log sources passed to the print callback. */
#define CXLBMC_LOG_LIBBPF 0
#define CXLBMC_LOG_LIBXDP 1

/* Receives every message of libbpf and libxdp, formatted, one call each.
 * level: 0 warn, 1 info, 2 debug (libbpf_print_level). */
typedef void (*cxlbmc_log_fn)(int source, int level, const char *message);

/* Routes libbpf's and libxdp's print callbacks to fn (NULL silences them). */
void cxlbmc_set_log(cxlbmc_log_fn fn);

/* bpf_object__open_mem with bpf_object_open_opts. NULL on failure, errno set.
 * pin_root may be NULL (libbpf's default, /sys/fs/bpf). The verifier log is
 * left to libbpf's own, growing buffer: libbpf prints it through the print
 * callback (a failing load is retried at log_level 1 when log_level is 0). */
struct bpf_object *cxlbmc_object_open_mem(const void *buf, size_t size,
					  const char *object_name,
					  const char *pin_root,
					  __u32 log_level);

/* bpf_prog_test_run_opts. *out_size: in, capacity of out; out, bytes written. */
int cxlbmc_prog_test_run(int prog_fd, const void *data, __u32 size,
			 void *out, __u32 *out_size, int repeat,
			 __u32 *retval, __u32 *duration_ns);

/* bpf_obj_get_info_by_fd for a program. *nr_map_ids: in, capacity of map_ids;
 * out, the number of maps the program uses (may exceed the capacity).
 * name must hold 16 bytes. */
int cxlbmc_prog_info(int prog_fd, __u32 *id, __u32 *type, char *name,
		     __u32 *map_ids, __u32 *nr_map_ids);

/* bpf_xdp_query: what is attached to ifindex. attach_mode is XDP_ATTACHED_*. */
int cxlbmc_xdp_query(int ifindex, __u32 *prog_id, __u8 *attach_mode,
		     __u32 *drv_prog_id, __u32 *skb_prog_id, __u32 *hw_prog_id);

/* attach_point is BPF_TC_INGRESS or BPF_TC_EGRESS (clsact).
 * Returns -EEXIST if the clsact qdisc is already there. */
int cxlbmc_tc_hook_create(int ifindex, int attach_point);
/* Destroys the clsact qdisc, with every filter on it. */
int cxlbmc_tc_hook_destroy(int ifindex);
/* bpf_tc_attach (direct action). handle/priority 0 = let the kernel choose;
 * the chosen values and the program id are returned. */
int cxlbmc_tc_attach(int ifindex, int attach_point, int prog_fd, int replace,
		     __u32 *handle, __u32 *priority, __u32 *prog_id);
int cxlbmc_tc_detach(int ifindex, int attach_point, __u32 handle, __u32 priority);

/* One filter found on a clsact hook. */
struct cxlbmc_tc_filter {
	__u32 handle;
	__u32 priority;
	__u32 prog_id;  /* BPF filters only */
	char kind[16];  /* TCA_KIND: "bpf", "u32", "flower", ... */
	char name[256]; /* TCA_BPF_NAME, e.g. "tc_egress:[42]" */
};

/* Lists the filters on a clsact hook (an rtnetlink filter dump).
 * Returns how many there are (only the first max are stored), 0 if there is
 * no clsact qdisc, or a negative errno. */
int cxlbmc_tc_list(int ifindex, int attach_point,
		   struct cxlbmc_tc_filter *out, int max);

/* statfs(path)->f_type, the filesystem's magic number (BPF_FS_MAGIC for bpffs). */
int cxlbmc_fs_magic(const char *path, unsigned long *magic);

/* mount -t bpf bpf <path> -o mode=0700. */
int cxlbmc_mount_bpffs(const char *path);

/* bpf_program__attach_uprobe_opts at a file offset of binary; pid -1 = every
 * process. The cookie is what bpf_get_attach_cookie() returns in the program.
 * NULL on failure, errno set. */
struct bpf_link *cxlbmc_attach_uprobe(struct bpf_program *prog, int pid, const char *binary,
				      size_t offset, int retprobe, __u64 cookie);

#endif
