/* Finds every write in a client->memcached byte stream (text, meta and
 * binary protocol) and records it as an mc_op. Used at XDP ingress for TCP
 * segments and UDP datagrams.
 *
 * The parser must agree with memcached 1.6.18 on where each command starts,
 * or a write could hide inside what we took for value bytes. So it mirrors
 * memcached's rules: tokens split on runs of spaces, a trailing "\r" is
 * dropped, storage commands need exactly their token count, value bytes are
 * swallowed only where memcached swallows them. Where we are not sure, the
 * answer is MC_DESYNC: the caller blocks every fill instead. */
#ifndef MCACHE_WRITES_BPF_H
#define MCACHE_WRITES_BPF_H

#include "mcache_common.bpf.h"

#define MC_CONTINUE 0
#define MC_STOP 1   /* consumed everything we can; maybe a partial tail */
#define MC_DESYNC 2 /* lost the command boundary */

/* Eight bytes of a token as a little-endian word (shorter tokens zero-padded),
 * so command names compare as integers. */
#define W2(a, b) ((__u64)(a) | (__u64)(b) << 8)
#define W3(a, b, c) (W2(a, b) | (__u64)(c) << 16)
#define W4(a, b, c, d) (W3(a, b, c) | (__u64)(d) << 24)
#define W5(a, b, c, d, e) (W4(a, b, c, d) | (__u64)(e) << 32)
#define W6(a, b, c, d, e, f) (W5(a, b, c, d, e) | (__u64)(f) << 40)
#define W7(a, b, c, d, e, f, g) (W6(a, b, c, d, e, f) | (__u64)(g) << 48)
#define W8(a, b, c, d, e, f, g, h) (W7(a, b, c, d, e, f, g) | (__u64)(h) << 56)

__noinline __u64 mc_tok_word(struct mcache_scratch *s, __u32 t)
{
	if (!s)
		return 0;
	__u32 off = s->tok_off[t & (MC_MAX_TOKENS - 1)];
	__u32 len = s->tok_len[t & (MC_MAX_TOKENS - 1)];
	__u64 w = 0;
	for (int i = 0; i < 8; i++) {
		if (i >= len)
			break;
		w |= (__u64)IN(s, off + i) << (8 * i);
	}
	return w;
}
static __always_inline __u32 tok_len(struct mcache_scratch *s, __u32 t)
{
	return s->tok_len[t & (MC_MAX_TOKENS - 1)];
}

static __always_inline __u32 tok_off(struct mcache_scratch *s, __u32 t)
{
	return s->tok_off[t & (MC_MAX_TOKENS - 1)];
}

static __always_inline int tok_is_noreply(struct mcache_scratch *s, __u32 t)
{
	return tok_len(s, t) == 7 && mc_tok_word(s, t) == W7('n', 'o', 'r', 'e', 'p', 'l', 'y');
}

/* Byte scanners run under bpf_loop: the verifier checks the callback once
 * instead of unrolling thousands of branching iterations. */
#define SCAN_NL 0       /* first '\n' */
#define SCAN_NONSPACE 1 /* first byte that is not ' ' */
#define SCAN_SPACE 2    /* first ' ' */
#define SCAN_DELIM 3    /* first ' ', control byte or DEL */

struct scan_ctx {
	struct mcache_scratch *s;
	__u32 from;
	__u32 to;
	__u32 what;
	__u32 found;
};

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* High bit set in each byte of v that is zero: exact for the lowest zero
 * byte (a borrow may flag bytes above it, which we never look at). */
#define ZERO_BYTES(v) (((v) - ONES) & ~(v) & HIGHS)
/* High bit set in each byte of v that is not zero: exact (no carry crosses bytes). */
#define NONZERO_BYTES(v) (((((v) & ~HIGHS) + ~HIGHS) | (v)) & HIGHS)

/* Index (0..7) of the lowest byte whose high bit is set in a nonzero m. */
static __always_inline __u32 first_flagged(__u64 m)
{
	__u32 i = 0;
	if (!(m & 0xffffffffULL)) {
		m >>= 32;
		i += 4;
	}
	if (!(m & 0xffffULL)) {
		m >>= 16;
		i += 2;
	}
	if (!(m & 0xffULL))
		i += 1;
	return i;
}

/* Eight bytes per iteration (little-endian loads; the BPF target is the
 * host's byte order). */
static long scan_cb(__u32 i, struct scan_ctx *c)
{
	__u32 p = c->from + i * 8;
	if (p >= c->to)
		return 1;
	/* `in` is followed by `out` in the scratch value: reading up to 7
	 * bytes past in[SCRATCH_SIZE - 1] stays inside the map value. */
	__u64 x = *(__u64 *)&c->s->in[BOUND(p, SCRATCH_MASK)];
	__u64 m;
	if (c->what == SCAN_NL)
		m = ZERO_BYTES(x ^ (ONES * '\n'));
	else if (c->what == SCAN_NONSPACE)
		m = NONZERO_BYTES(x ^ (ONES * ' '));
	else if (c->what == SCAN_SPACE)
		m = ZERO_BYTES(x ^ (ONES * ' '));
	else /* bytes < 0x21 (all have a clear high bit) or DEL */
		m = ((x - ONES * 0x21) & ~x & HIGHS) | ZERO_BYTES(x ^ (ONES * 0x7f));
	if (!m)
		return 0;
	__u32 at = p + first_flagged(m);
	c->found = at < c->to ? at : c->to;
	return 1;
}

/* First index in [from, to) matching `what`, or `to`. */
__noinline int mc_scan(struct mcache_scratch *s, __u32 from, __u32 to, __u32 what)
{
	if (!s || from >= to)
		return to;
	struct scan_ctx c = { .s = s, .from = from, .to = to, .what = what, .found = to };
	__u32 n = (to - from + 7) / 8;
	if (n > SCRATCH_SIZE / 8)
		n = SCRATCH_SIZE / 8;
	bpf_loop(n, scan_cb, &c, 0);
	return c.found;
}

/* Index of the first '\n' in s->in[from, to), or -1. */
static __always_inline int mc_find_nl(struct mcache_scratch *s, __u32 from, __u32 to)
{
	int p = mc_scan(s, from, to, SCAN_NL);
	return (__u32)p < to ? p : -1;
}

/* Splits s->in[from, to) into space-separated tokens like memcached's
 * tokenize_command. Returns the token count, MC_MAX_TOKENS + 1 if more. */
__noinline int mc_tokenize(struct mcache_scratch *s, __u32 from, __u32 to)
{
	__u32 n = 0, p = from;
	if (!s)
		return 0;
	for (__u32 t = 0; t <= MC_MAX_TOKENS; t++) {
		__u32 start = mc_scan(s, p, to, SCAN_NONSPACE);
		if (start >= to)
			break;
		if (t == MC_MAX_TOKENS) {
			n = MC_MAX_TOKENS + 1;
			break;
		}
		__u32 end = mc_scan(s, start, to, SCAN_SPACE);
		s->tok_off[t & (MC_MAX_TOKENS - 1)] = start;
		s->tok_len[t & (MC_MAX_TOKENS - 1)] = end - start;
		n = t + 1;
		p = end;
	}
	s->ntok = n;
	return n;
}

static __always_inline void add_op(struct mcache_scratch *s, __u8 kind, __u64 hash, __s64 arg,
				   __u8 ttl_mode, __u8 noreply)
{
	__u32 i = s->nops;
	if (i >= MC_MAX_OPS) {
		/* Too many writes in one segment to track one by one. */
		s->flags |= L1_CONN_OVERFLOW;
		return;
	}
	struct mc_op *op = &s->ops[i & (MC_MAX_OPS - 1)];
	op->hash = hash;
	op->arg = arg;
	op->kind = kind;
	op->ttl_mode = ttl_mode;
	op->noreply = noreply;
	s->nops = i + 1;
}

static __always_inline void add_key_op(struct mcache_scratch *s, __u32 t, __s64 arg, __u8 ttl_mode,
				       __u8 noreply)
{
	add_op(s, MC_OP_INVALIDATE, mc_hash(s, tok_off(s, t), tok_len(s, t)), arg, ttl_mode, noreply);
}

/* Meta flag tokens, decoded to bits. */
#define MF_QUIET 1
#define MF_BASE64 2
#define MF_TTL 4        /* T<ttl>: s->meta_exptime */
#define MF_TTL_BAD 8    /* T with an unreadable number */
#define MF_VIVIFY 16    /* N<ttl> */
#define MF_COND 32      /* C<cas>, I, E: may or may not apply */
#define MF_MODE_KEEP 64 /* ms M[AP]: append/prepend keep the TTL */
#define MF_MODE_ADD 128 /* ms M[E]: add */

__noinline __u32 mc_meta_flag(struct mcache_scratch *s, __u32 t)
{
	if (!s)
		return 0;
	__u32 off = s->tok_off[t & (MC_MAX_TOKENS - 1)];
	__u32 len = s->tok_len[t & (MC_MAX_TOKENS - 1)];
	__u8 f = IN(s, off);
	switch (f) {
	case 'q':
		return MF_QUIET;
	case 'b':
		return MF_BASE64;
	case 'N':
		return MF_VIVIFY;
	case 'C':
	case 'I':
	case 'E':
		return MF_COND;
	case 'T': {
		__s64 v = mc_parse_num(s, off + 1, len - 1, 1);
		if (v == MC_BADNUM)
			return MF_TTL_BAD;
		s->meta_exptime = v;
		return MF_TTL;
	}
	case 'M': {
		__u8 m = len > 1 ? IN(s, off + 1) : 0;
		if (m == 'A' || m == 'a' || m == 'P' || m == 'p')
			return MF_MODE_KEEP;
		if (m == 'E' || m == 'e')
			return MF_MODE_ADD;
		return 0;
	}
	}
	return 0;
}

/* ORs the bits of flag tokens [first, ntok). */
__noinline __u32 mc_meta_flags(struct mcache_scratch *s, __u32 first, __u32 ntok)
{
	__u32 bits = 0;
	if (!s)
		return 0;
	s->meta_exptime = 0;
	for (__u32 t = 0; t < MC_MAX_TOKENS; t++) {
		__u32 i = first + t;
		if (i >= ntok || i >= MC_MAX_TOKENS)
			break;
		bits |= mc_meta_flag(s, i);
	}
	return bits;
}

/* What a meta command does to the item's TTL; *writes says if it writes. */
static __always_inline __u8 meta_ttl_mode(__u32 bits, __u8 cmd, __u8 *writes)
{
	if (bits & MF_TTL_BAD)
		bits |= MF_VIVIFY; /* an unreadable TTL: treat the TTL as unknown */
	if (cmd == 'g') {
		/* mg writes only when it touches (T), vivifies (N) or flags the item. */
		*writes = (bits & (MF_TTL | MF_VIVIFY | MF_COND)) != 0;
		if (bits & MF_VIVIFY)
			return MC_TTL_FORGET;
		return (bits & MF_TTL) ? MC_TTL_SET : MC_TTL_KEEP;
	}
	*writes = 1;
	if (cmd == 's') {
		if (bits & (MF_MODE_ADD | MF_COND | MF_VIVIFY))
			return MC_TTL_FORGET;
		if (bits & MF_MODE_KEEP)
			return MC_TTL_KEEP;
		return MC_TTL_SET; /* no T: exptime 0 */
	}
	if (cmd == 'a') {
		if (bits & MF_VIVIFY)
			return MC_TTL_FORGET;
		return (bits & MF_TTL) ? MC_TTL_SET : MC_TTL_KEEP;
	}
	return (bits & MF_TTL) ? MC_TTL_FORGET : MC_TTL_KEEP; /* md */
}

/* One text command whose line is s->in[s->pos, nl]. */
__noinline int mc_parse_text_line(struct mcache_scratch *s, __u32 nl)
{
	if (!s)
		return MC_DESYNC;
	__u32 pos = s->pos;
	__u32 end = nl;
	if (end > pos && IN(s, end - 1) == '\r')
		end--;
	s->pos = nl + 1;
	int ntok = mc_tokenize(s, pos, end);
	if (ntok <= 0)
		return MC_CONTINUE;
	__u32 n = ntok;
	__u32 clen = tok_len(s, 0);
	__u64 cw = mc_tok_word(s, 0);

	/* Storage commands: <cmd> <key> <flags> <exptime> <bytes> [cas] [noreply] */
	int is_cas = clen == 3 && cw == W3('c', 'a', 's');
	__u8 ttl_mode = 0xff;
	if (clen == 3 && cw == W3('s', 'e', 't'))
		ttl_mode = MC_TTL_SET;
	else if (clen == 3 && cw == W3('a', 'd', 'd'))
		ttl_mode = MC_TTL_FORGET;
	else if (clen == 7 && cw == W7('r', 'e', 'p', 'l', 'a', 'c', 'e'))
		ttl_mode = MC_TTL_SET;
	else if ((clen == 6 && cw == W6('a', 'p', 'p', 'e', 'n', 'd')) ||
		 (clen == 7 && cw == W7('p', 'r', 'e', 'p', 'e', 'n', 'd')))
		ttl_mode = MC_TTL_KEEP;
	else if (is_cas)
		ttl_mode = MC_TTL_FORGET;
	if (ttl_mode != 0xff) {
		__u32 want = is_cas ? 6 : 5;
		if (n != want && n != want + 1)
			return MC_CONTINUE; /* memcached: ERROR, no data read */
		if (tok_len(s, 1) > MC_MAX_KEY_LEN)
			return MC_DESYNC; /* memcached's handling of the data is not worth guessing */
		__s64 exptime = mc_parse_num(s, tok_off(s, 3), tok_len(s, 3), 1);
		__s64 vlen = mc_parse_num(s, tok_off(s, 4), tok_len(s, 4), 1);
		if (vlen < 0 || exptime == MC_BADNUM || mc_parse_num(s, tok_off(s, 2), tok_len(s, 2), 0) < 0)
			return MC_CONTINUE; /* CLIENT_ERROR bad command line format, nothing swallowed */
		__u8 noreply = n == want + 1 && tok_is_noreply(s, want);
		add_key_op(s, 1, exptime, ttl_mode, noreply);
		s->skip = (__u32)vlen + 2;
		return MC_CONTINUE;
	}

	/* incr/decr <key> <delta> [noreply]; delete <key> [0] [noreply]; touch <key> <exptime> [noreply] */
	if ((clen == 4 && (cw == W4('i', 'n', 'c', 'r') || cw == W4('d', 'e', 'c', 'r'))) ||
	    (clen == 6 && cw == W6('d', 'e', 'l', 'e', 't', 'e')) ||
	    (clen == 5 && cw == W5('t', 'o', 'u', 'c', 'h'))) {
		if (n < 2)
			return MC_CONTINUE;
		__u8 mode = MC_TTL_KEEP;
		__s64 exptime = 0;
		if (clen == 5) {
			exptime = n >= 3 ? mc_parse_num(s, tok_off(s, 2), tok_len(s, 2), 1) : MC_BADNUM;
			mode = exptime == MC_BADNUM ? MC_TTL_FORGET : MC_TTL_SET;
		}
		add_key_op(s, 1, exptime, mode, tok_is_noreply(s, n - 1));
		return MC_CONTINUE;
	}

	/* gat/gats <exptime> <key>* */
	if ((clen == 3 && cw == W3('g', 'a', 't')) || (clen == 4 && cw == W4('g', 'a', 't', 's'))) {
		if (n > MC_MAX_TOKENS) {
			/* More keys than one tokenisation holds: block all fills. */
			add_op(s, MC_OP_BLOCK, 0, 0, MC_TTL_KEEP, 1);
			return MC_CONTINUE;
		}
		__s64 exptime = mc_parse_num(s, tok_off(s, 1), tok_len(s, 1), 1);
		__u8 mode = exptime == MC_BADNUM ? MC_TTL_FORGET : MC_TTL_SET;
		for (__u32 t = 2; t < MC_MAX_TOKENS; t++) {
			if (t >= n)
				break;
			add_key_op(s, t, exptime, mode, 0);
		}
		return MC_CONTINUE;
	}

	/* flush_all [delay] [noreply] */
	if (clen == 9 && cw == W8('f', 'l', 'u', 's', 'h', '_', 'a', 'l') && IN(s, tok_off(s, 0) + 8) == 'l') {
		__s64 delay = 0;
		if (n >= 2 && !tok_is_noreply(s, 1))
			delay = mc_parse_num(s, tok_off(s, 1), tok_len(s, 1), 1);
		if (delay == MC_BADNUM)
			return MC_CONTINUE; /* CLIENT_ERROR: nothing flushed */
		add_op(s, MC_OP_FLUSH, 0, delay < 0 ? 0 : delay, MC_TTL_KEEP, tok_is_noreply(s, n - 1));
		return MC_CONTINUE;
	}

	/* Meta: ms <key> <datalen> <flags>*, md|ma|mg <key> <flags>* */
	if (clen == 2 && IN(s, tok_off(s, 0)) == 'm') {
		__u8 c = IN(s, tok_off(s, 0) + 1);
		if (c != 's' && c != 'd' && c != 'a' && c != 'g')
			return MC_CONTINUE; /* mn, me: no writes */
		if (n < 2)
			return MC_CONTINUE;
		__u32 first_flag = 2;
		__s64 vlen = -1;
		if (c == 's') {
			if (n < 3)
				return MC_CONTINUE;
			vlen = mc_parse_num(s, tok_off(s, 2), tok_len(s, 2), 1);
			if (vlen < 0)
				return MC_CONTINUE; /* CLIENT_ERROR bad data chunk, nothing swallowed */
			if (tok_len(s, 1) > MC_MAX_KEY_LEN)
				return MC_DESYNC;
			first_flag = 3;
		}
		__u32 bits = mc_meta_flags(s, first_flag, n);
		__u8 writes = 0;
		__u8 mode = meta_ttl_mode(bits, c, &writes);
		if (n > MC_MAX_TOKENS) {
			writes = 1;
			mode = MC_TTL_FORGET;
		}
		if (writes) {
			if (bits & MF_BASE64)
				add_op(s, MC_OP_BLOCK, 0, 0, MC_TTL_KEEP, 1);
			else
				add_key_op(s, 1, (bits & MF_TTL) ? s->meta_exptime : 0, mode, (bits & MF_QUIET) != 0);
		}
		if (c == 's')
			s->skip = (__u32)vlen + 2;
		return MC_CONTINUE;
	}
	return MC_CONTINUE; /* reads and admin commands */
}

/* Binary protocol opcodes that write, and how each treats the TTL. */
static __always_inline int bin_write(__u8 op, __u8 *ttl_mode, __u8 *noreply, __u8 *flush)
{
	*noreply = 0;
	*flush = 0;
	switch (op) {
	case 0x11: case 0x12: case 0x13: case 0x14: case 0x15: case 0x16:
	case 0x18: case 0x19: case 0x1a: case 0x1e: case 0x24:
		*noreply = 1; /* quiet variants answer only errors */
		break;
	}
	switch (op) {
	case 0x01: case 0x11: /* set */
	case 0x03: case 0x13: /* replace */
	case 0x1c: case 0x1d: case 0x1e: case 0x23: case 0x24: /* touch, gat */
		*ttl_mode = MC_TTL_SET;
		return 1;
	case 0x02: case 0x12: /* add */
	case 0x05: case 0x06: case 0x15: case 0x16: /* incr/decr may create */
		*ttl_mode = MC_TTL_FORGET;
		return 1;
	case 0x04: case 0x14: /* delete */
	case 0x0e: case 0x0f: case 0x19: case 0x1a: /* append/prepend */
		*ttl_mode = MC_TTL_KEEP;
		return 1;
	case 0x08: case 0x18: /* flush */
		*flush = 1;
		*ttl_mode = MC_TTL_KEEP;
		return 1;
	}
	return 0;
}

static __always_inline __u32 be32_at(struct mcache_scratch *s, __u32 off)
{
	return (__u32)IN(s, off) << 24 | (__u32)IN(s, off + 1) << 16 | (__u32)IN(s, off + 2) << 8 |
	       (__u32)IN(s, off + 3);
}

/* One binary request at s->pos: 24-byte header, extras, key, value. */
__noinline int mc_parse_binary(struct mcache_scratch *s)
{
	if (!s)
		return MC_DESYNC;
	__u32 pos = s->pos, len = s->in_len;
	if (len < pos + 24)
		return MC_STOP; /* header not complete: carried over */
	if (IN(s, pos) != 0x80)
		return MC_DESYNC; /* memcached closes such a connection */
	__u8 opcode = IN(s, pos + 1);
	__u32 keylen = (__u32)IN(s, pos + 2) << 8 | IN(s, pos + 3);
	__u32 extlen = IN(s, pos + 4);
	__u32 bodylen = be32_at(s, pos + 8);
	if (bodylen < keylen + extlen || bodylen > 0x7fffffff)
		return MC_DESYNC;
	__u8 ttl_mode, noreply, flush;
	if (bin_write(opcode, &ttl_mode, &noreply, &flush)) {
		if (len < pos + 24 + extlen + keylen)
			return MC_STOP; /* key not complete: carried over */
		__s64 exptime = 0;
		if (flush) {
			if (extlen == 4)
				exptime = be32_at(s, pos + 24);
			add_op(s, MC_OP_FLUSH, 0, exptime, MC_TTL_KEEP, noreply);
		} else if (keylen == 0 || keylen > MC_MAX_KEY_LEN) {
			add_op(s, MC_OP_BLOCK, 0, 0, MC_TTL_KEEP, 1);
		} else {
			if (ttl_mode == MC_TTL_SET) {
				if (extlen == 8)
					exptime = (__s32)be32_at(s, pos + 28);
				else if (extlen == 4)
					exptime = (__s32)be32_at(s, pos + 24);
				else
					ttl_mode = MC_TTL_FORGET;
			}
			add_op(s, MC_OP_INVALIDATE, mc_hash(s, pos + 24 + extlen, keylen), exptime, ttl_mode, noreply);
		}
	}
	__u32 next = pos + 24 + bodylen;
	if (next > len) {
		s->skip = next - len;
		s->pos = len;
	} else {
		s->pos = next;
	}
	return MC_CONTINUE;
}

/* One command at s->pos (after value bytes to skip). */
__noinline int mc_parse_one(struct mcache_scratch *s)
{
	if (!s)
		return MC_DESYNC;
	__u32 pos = s->pos, len = s->in_len;
	if (s->skip) {
		__u32 avail = pos < len ? len - pos : 0;
		if (s->skip >= avail) {
			s->skip -= avail;
			s->pos = len;
			return MC_STOP;
		}
		pos += s->skip;
		s->skip = 0;
		s->pos = pos;
	}
	if (pos >= len)
		return MC_STOP;
	if (s->flags & L1_CONN_FRESH) {
		/* memcached picks the protocol from a connection's first byte. */
		s->flags &= ~L1_CONN_FRESH;
		if (IN(s, pos) == 0x80)
			s->flags |= L1_CONN_BINARY;
	}
	if (s->flags & L1_CONN_BINARY)
		return mc_parse_binary(s);
	int nl = mc_find_nl(s, pos, len);
	if (s->flags & L1_CONN_SKIPLINE) {
		if (nl < 0) {
			s->pos = len;
			return MC_STOP;
		}
		s->flags &= ~L1_CONN_SKIPLINE;
		s->pos = nl + 1;
		return MC_CONTINUE;
	}
	if (nl < 0)
		return MC_STOP; /* unfinished line: carried over */
	return mc_parse_text_line(s, nl);
}

/* Parses s->in[0, in_len) from s->pos. On return s->pos is where an
 * unfinished command starts (the caller carries s->in[pos, in_len) to the
 * next segment). Returns MC_STOP or MC_DESYNC. */
__noinline int mc_parse_stream(struct mcache_scratch *s)
{
	if (!s)
		return MC_DESYNC;
	int r = MC_CONTINUE;
	for (int i = 0; i < 256; i++) {
		r = mc_parse_one(s);
		if (r != MC_CONTINUE)
			break;
	}
	if (r == MC_CONTINUE)
		return MC_DESYNC; /* more commands in one segment than we walk */
	if (r == MC_DESYNC)
		return MC_DESYNC;
	if (s->pos < s->in_len && !(s->flags & L1_CONN_BINARY) && !s->skip) {
		/* An unfinished text line: too long to carry means either a long
		 * multi-key get (skip to its newline, as memcached reads it) or
		 * something we cannot follow. */
		__u32 rest = s->in_len - s->pos;
		if (rest > L1_PARTIAL_MAX) {
			__u32 p = s->pos;
			if (IN(s, p) == 'g' && IN(s, p + 1) == 'e' && IN(s, p + 2) == 't' &&
			    (IN(s, p + 3) == ' ' || (IN(s, p + 3) == 's' && IN(s, p + 4) == ' '))) {
				s->flags |= L1_CONN_SKIPLINE;
				s->pos = s->in_len;
			} else {
				return MC_DESYNC;
			}
		}
	} else if (s->pos < s->in_len && (s->flags & L1_CONN_BINARY) && s->in_len - s->pos > L1_PARTIAL_MAX) {
		return MC_DESYNC;
	}
	return MC_STOP;
}

#endif
