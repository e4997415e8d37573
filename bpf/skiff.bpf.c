// SPDX-License-Identifier: GPL-2.0
/*
 * skiff sk_lookup steering: a TCP connection for a configured local port is
 * handed to the listening socket of that port's worker group, whatever port
 * the listener itself is bound to. The kernel's SO_REUSEPORT selection then
 * picks a worker inside the group. Userspace (bpf/loader.py) owns every map.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define MAX_GROUPS 64

/* Bits of a `group_families` value: which families the group's socket takes. */
#define FAMILY_IPV4 1
#define FAMILY_IPV6 2

/* Indexes into `counters`; bpf/loader.py names them in the same order. */
enum counter {
	C_LOOKUPS = 0,		/* TCP lookups for a port (and address) that is ours */
	C_STEERED,		/* handed to the group's socket */
	C_DROPPED_NO_SOCKET,	/* ours, but the group has no socket right now */
	C_ERRORS,		/* bpf_sk_assign refused the group's socket */
	C_MAX,
};

/*
 * Key: local port in HOST byte order, widened to __u32, because that is how
 * struct bpf_sk_lookup.local_port exposes it (unlike remote_port, which is
 * network order). Value: worker-group index, a key of `sockets`.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

/* Key: worker-group index. Value: that group's listening socket (userspace
 * writes an fd, reads back the socket cookie). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, MAX_GROUPS);
	__type(key, __u32);
	__type(value, __u64);
} sockets SEC(".maps");

/* Per-CPU so the hot path never contends on a shared cache line. Lookups
 * for ports that are not ours are not counted at all. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* One entry: the IPv4 address we steer for, NETWORK byte order like
 * local_ip4; 0 means every local address. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bind_addr SEC(".maps");

/* Key: worker-group index. Value: FAMILY_* bits of that group's socket (an
 * AF_INET socket takes IPv4; AF_INET6 takes IPv6, and IPv4 too unless
 * IPV6_V6ONLY). 0: not written (a loader older than this map), which keeps
 * the old behaviour: every family. A map of its own, added later, so the
 * pinned maps above keep their layout across takeovers. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_GROUPS);
	__type(key, __u32);
	__type(value, __u32);
} group_families SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &idx);

	if (value)
		*value += 1;
}

/* An address filter only names an IPv4 address, so with one set, IPv6
 * lookups and other IPv4 addresses are not ours. */
static __always_inline int address_is_ours(const struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	__u32 *want = bpf_map_lookup_elem(&bind_addr, &zero);

	if (!want || *want == 0)
		return 1;
	return ctx->family == AF_INET && ctx->local_ip4 == *want;
}

/* Can the group's socket take a connection of this lookup's family? */
static __always_inline int family_is_ours(const struct bpf_sk_lookup *ctx, __u32 *group)
{
	__u32 *families = bpf_map_lookup_elem(&group_families, group);
	__u32 want;

	if (!families || *families == 0)
		return 1;
	want = ctx->family == AF_INET6 ? FAMILY_IPV6 : FAMILY_IPV4;
	return (*families & want) != 0;
}

SEC("sk_lookup")
int steer(struct bpf_sk_lookup *ctx)
{
	__u32 port = ctx->local_port;
	struct bpf_sock *sk;
	__u32 *group;
	long err;

	/* UDP is not ours: skiff proxies raw TCP only. */
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	/* Not a configured port: let the regular socket lookup run untouched. */
	group = bpf_map_lookup_elem(&ports, &port);
	if (!group)
		return SK_PASS;

	/* Configured port but another address: someone else may own it. */
	if (!address_is_ours(ctx))
		return SK_PASS;

	/* Configured port but a family our socket cannot take (IPv6 with an
	 * IPv4 group socket): not ours, so another program's listener of that
	 * family gets it. */
	if (!family_is_ours(ctx, group))
		return SK_PASS;

	count(C_LOOKUPS);

	sk = bpf_map_lookup_elem(&sockets, group);
	if (!sk) {
		count(C_DROPPED_NO_SOCKET);
		/* The port is ours but its group has no listener right now (a
		 * restart in progress). Passing would let whichever socket happens
		 * to bind this port take our traffic; drop so the lookup fails. */
		return SK_DROP;
	}

	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(C_ERRORS);
		/* The group socket cannot take this connection although its
		 * family matches (for example it stopped listening). Same reason
		 * as above: the port is ours, so nobody else may have it. */
		return SK_DROP;
	}

	count(C_STEERED);
	/* Assigned: the kernel delivers to sk (and its reuseport group). */
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
