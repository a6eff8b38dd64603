#include "cxlbmc_shim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>

/* ---- logging --------------------------------------------------------------- */

static cxlbmc_log_fn log_fn;

static int forward(int source, int level, const char *format, va_list ap)
{
	char small[1024];
	va_list copy;
	int n;

	if (!log_fn)
		return 0;
	va_copy(copy, ap);
	n = vsnprintf(small, sizeof(small), format, ap);
	if (n >= (int)sizeof(small)) {
		/* Verifier logs are long: format them whole. */
		char *big = malloc((size_t)n + 1);
		if (big) {
			vsnprintf(big, (size_t)n + 1, format, copy);
			log_fn(source, level, big);
			free(big);
		} else {
			log_fn(source, level, small);
		}
	} else if (n >= 0) {
		log_fn(source, level, small);
	}
	va_end(copy);
	return n;
}

static int print_libbpf(enum libbpf_print_level level, const char *format, va_list ap)
{
	return forward(CXLBMC_LOG_LIBBPF, (int)level, format, ap);
}

static int print_libxdp(enum libxdp_print_level level, const char *format, va_list ap)
{
	return forward(CXLBMC_LOG_LIBXDP, (int)level, format, ap);
}

void cxlbmc_set_log(cxlbmc_log_fn fn)
{
	log_fn = fn;
	libbpf_set_print(print_libbpf);
	libxdp_set_print(print_libxdp);
}

/* ---- objects and programs -------------------------------------------------- */

struct bpf_object *cxlbmc_object_open_mem(const void *buf, size_t size,
					  const char *object_name,
					  const char *pin_root,
					  __u32 log_level)
{
	LIBBPF_OPTS(bpf_object_open_opts, opts,
		    .object_name = object_name,
		    .pin_root_path = pin_root,
		    .kernel_log_level = log_level);

	return bpf_object__open_mem(buf, size, &opts);
}

int cxlbmc_prog_test_run(int prog_fd, const void *data, __u32 size,
			 void *out, __u32 *out_size, int repeat,
			 __u32 *retval, __u32 *duration_ns)
{
	LIBBPF_OPTS(bpf_test_run_opts, opts,
		    .data_in = data,
		    .data_size_in = size,
		    .data_out = out,
		    .data_size_out = *out_size,
		    .repeat = repeat);

	if (bpf_prog_test_run_opts(prog_fd, &opts))
		return -errno;
	*out_size = opts.data_size_out;
	*retval = opts.retval;
	*duration_ns = opts.duration;
	return 0;
}

int cxlbmc_prog_info(int prog_fd, __u32 *id, __u32 *type, char *name,
		     __u32 *map_ids, __u32 *nr_map_ids)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	info.nr_map_ids = map_ids ? *nr_map_ids : 0;
	info.map_ids = (__u64)(unsigned long)map_ids;
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	*id = info.id;
	*type = info.type;
	memcpy(name, info.name, sizeof(info.name));
	name[sizeof(info.name) - 1] = '\0';
	*nr_map_ids = info.nr_map_ids;
	return 0;
}

int cxlbmc_xdp_query(int ifindex, __u32 *prog_id, __u8 *attach_mode,
		     __u32 *drv_prog_id, __u32 *skb_prog_id, __u32 *hw_prog_id)
{
	LIBBPF_OPTS(bpf_xdp_query_opts, opts);

	if (bpf_xdp_query(ifindex, 0, &opts))
		return -errno;
	*prog_id = opts.prog_id;
	*attach_mode = opts.attach_mode;
	*drv_prog_id = opts.drv_prog_id;
	*skb_prog_id = opts.skb_prog_id;
	*hw_prog_id = opts.hw_prog_id;
	return 0;
}

/* ---- tc -------------------------------------------------------------------- */

int cxlbmc_tc_hook_create(int ifindex, int attach_point)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = (enum bpf_tc_attach_point)attach_point);

	return bpf_tc_hook_create(&hook) ? -errno : 0;
}

int cxlbmc_tc_hook_destroy(int ifindex)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);

	return bpf_tc_hook_destroy(&hook) ? -errno : 0;
}

int cxlbmc_tc_attach(int ifindex, int attach_point, int prog_fd, int replace,
		     __u32 *handle, __u32 *priority, __u32 *prog_id)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = (enum bpf_tc_attach_point)attach_point);
	LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd,
		    .flags = replace ? BPF_TC_F_REPLACE : 0,
		    .handle = *handle, .priority = *priority);

	if (bpf_tc_attach(&hook, &opts))
		return -errno;
	*handle = opts.handle;
	*priority = opts.priority;
	*prog_id = opts.prog_id;
	return 0;
}

int cxlbmc_tc_detach(int ifindex, int attach_point, __u32 handle, __u32 priority)
{
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex,
		    .attach_point = (enum bpf_tc_attach_point)attach_point);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);

	return bpf_tc_detach(&hook, &opts) ? -errno : 0;
}

/* libbpf can only query a filter whose handle and priority it is told; a
 * filter added by `tc filter add ... object-pinned` has ones the kernel chose,
 * so list them with an RTM_GETTFILTER dump instead. */
static void parse_filter(struct nlmsghdr *nh, struct cxlbmc_tc_filter *f)
{
	struct tcmsg *t = NLMSG_DATA(nh);
	int len = (int)nh->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*t));
	struct rtattr *a;

	memset(f, 0, sizeof(*f));
	f->handle = t->tcm_handle;
	f->priority = TC_H_MAJ(t->tcm_info) >> 16;
	for (a = (struct rtattr *)((char *)t + NLMSG_ALIGN(sizeof(*t))); RTA_OK(a, len);
	     a = RTA_NEXT(a, len)) {
		if (a->rta_type == TCA_KIND) {
			size_t n = RTA_PAYLOAD(a);
			if (n >= sizeof(f->kind))
				n = sizeof(f->kind) - 1;
			memcpy(f->kind, RTA_DATA(a), n);
			f->kind[n] = '\0';
		} else if (a->rta_type == TCA_OPTIONS) {
			int olen = (int)RTA_PAYLOAD(a);
			struct rtattr *o;

			for (o = RTA_DATA(a); RTA_OK(o, olen); o = RTA_NEXT(o, olen)) {
				if (o->rta_type == TCA_BPF_ID && RTA_PAYLOAD(o) >= 4) {
					memcpy(&f->prog_id, RTA_DATA(o), 4);
				} else if (o->rta_type == TCA_BPF_NAME) {
					size_t n = RTA_PAYLOAD(o);
					if (n >= sizeof(f->name))
						n = sizeof(f->name) - 1;
					memcpy(f->name, RTA_DATA(o), n);
					f->name[n] = '\0';
				}
			}
		}
	}
}

int cxlbmc_tc_list(int ifindex, int attach_point,
		   struct cxlbmc_tc_filter *out, int max)
{
	struct {
		struct nlmsghdr nh;
		struct tcmsg t;
	} req;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	char buf[32768];
	int fd, count = 0, err = 0, done = 0;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct tcmsg));
	req.nh.nlmsg_type = RTM_GETTFILTER;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.nh.nlmsg_seq = 1;
	req.t.tcm_family = AF_UNSPEC;
	req.t.tcm_ifindex = ifindex;
	req.t.tcm_parent = TC_H_MAKE(TC_H_CLSACT, attach_point == BPF_TC_INGRESS
							   ? TC_H_MIN_INGRESS
							   : TC_H_MIN_EGRESS);
	if (sendto(fd, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel,
		   sizeof(kernel)) < 0) {
		err = -errno;
		goto out;
	}

	while (!done) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		struct nlmsghdr *nh;
		int len;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			goto out;
		}
		len = (int)n;
		for (nh = (struct nlmsghdr *)buf; NLMSG_OK(nh, len); nh = NLMSG_NEXT(nh, len)) {
			if (nh->nlmsg_type == NLMSG_DONE) {
				done = 1;
				break;
			}
			if (nh->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *e = NLMSG_DATA(nh);
				/* No clsact qdisc: nothing attached. */
				err = (e->error == -EINVAL || e->error == -ENOENT) ? 0 : e->error;
				goto out;
			}
			if (nh->nlmsg_type == RTM_NEWTFILTER) {
				struct cxlbmc_tc_filter f;

				parse_filter(nh, &f);
				/* The dump also lists each priority's chain head (handle 0). */
				if (f.handle == 0)
					continue;
				if (count < max)
					out[count] = f;
				count++;
			}
		}
	}
out:
	close(fd);
	return err ? err : count;
}

/* ---- bpffs ----------------------------------------------------------------- */

int cxlbmc_fs_magic(const char *path, unsigned long *magic)
{
	struct statfs info;

	if (statfs(path, &info))
		return -errno;
	*magic = (unsigned long)info.f_type;
	return 0;
}

int cxlbmc_mount_bpffs(const char *path)
{
	return mount("bpf", path, "bpf", 0, "mode=0700") ? -errno : 0;
}

struct bpf_link *cxlbmc_attach_uprobe(struct bpf_program *prog, int pid, const char *binary,
				      size_t offset, int retprobe, __u64 cookie)
{
	LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = retprobe != 0, .bpf_cookie = cookie);
	return bpf_program__attach_uprobe_opts(prog, pid, binary, offset, &opts);
}
