"""Hostile mail, built on demand: what an attacker (or a very broken mailer) can put in one
message to make a parser recurse, loop, allocate or crash.

``hostile_message(kind, n, seed)`` builds one kind at a size; ``HOSTILE_KINDS`` lists them;
``hostile_mailboxes`` is the hypothesis strategy over mixes of them; ``hostile_corpus()`` is a
fixed mix for the integration test (every kind once, plus a reply chain)."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

CRLF = b"\r\n"


def _msg(headers: list[bytes], body: bytes = b"hello\r\n") -> bytes:
    return CRLF.join(headers) + CRLF + CRLF + body


def _id(tag: str, i: int, seed: int) -> bytes:
    return f"<{tag}-{i}-{seed}@hostile.test>".encode()


def deep_chain(n: int, seed: int) -> list[bytes]:
    """``n`` messages, each replying to the one before with the whole chain in References."""
    out = []
    for i in range(n):
        refs = b" ".join(_id("chain", j, seed) for j in range(i))
        headers = [b"Message-ID: " + _id("chain", i, seed), b"Subject: Re: the long one"]
        if i:
            headers += [b"In-Reply-To: " + _id("chain", i - 1, seed), b"References: " + refs]
        out.append(_msg(headers))
    return out


def long_references(n: int, seed: int) -> list[bytes]:
    refs = b" ".join(_id("ref", j, seed) for j in range(n))
    return [
        _msg(
            [b"Message-ID: " + _id("many", 0, seed), b"Subject: many refs", b"References: " + refs]
        )
    ]


def reference_cycle(n: int, seed: int) -> list[bytes]:
    """Messages whose References point at each other in a ring (and at themselves)."""
    k = max(2, min(n, 50))
    out = []
    for i in range(k):
        refs = [_id("cyc", (i + 1) % k, seed), _id("cyc", i, seed), _id("cyc", (i - 1) % k, seed)]
        out.append(
            _msg(
                [
                    b"Message-ID: " + _id("cyc", i, seed),
                    b"Subject: ring",
                    b"References: " + b" ".join(refs),
                ]
            )
        )
    return out


def deep_multipart(n: int, seed: int) -> list[bytes]:
    head = [b"Message-ID: " + _id("deep", 0, seed), b"Subject: deep", b"MIME-Version: 1.0"]
    body = b""
    for i in range(n):
        body += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    body += b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for i in reversed(range(n)):
        body += b"--b%d--\r\n" % i
    return [CRLF.join(head) + CRLF + body]


def huge_headers(n: int, seed: int) -> list[bytes]:
    """Several MB of headers: a junk field, a Subject of encoded words, a huge To list."""
    size = max(n, 1) * 1024
    words = b" ".join(b"=?utf-8?q?caf=C3=A9?=" for _ in range(size // 20))
    to = b", ".join(b'"N %d" <u%d@hostile.test>' % (i, i) for i in range(size // 30))
    return [
        _msg(
            [
                b"Message-ID: " + _id("huge", 0, seed),
                b"X-Junk: " + b"a" * size,
                b"Subject: " + words,
                b"To: " + to,
                b"From: " + b"(" * 5000 + b"x@hostile.test",
            ]
        )
    ]


def nul_and_bad_bytes(n: int, seed: int) -> list[bytes]:
    return [
        _msg(
            [b"Message-ID: " + _id("nul", 0, seed), b"Subject: a\x00b\xff\xfe", b"From: \x00@\x00"],
            b"bo\x00dy \xff\xfe\r\n",
        )
    ]


def bad_charsets(n: int, seed: int) -> list[bytes]:
    return [
        _msg(
            [
                b"Message-ID: " + _id("cs", 0, seed),
                b"Subject: =?x-no-such-charset?q?abc?= =?utf-8?b?!!!notbase64?= =?utf-7?q?+AGE-?=",
                b"From: =?utf-8?q?=ff=fe?= <a@hostile.test>",
                b"MIME-Version: 1.0",
                b'Content-Type: text/plain; charset="x-no-such-charset"',
                b"Content-Transfer-Encoding: base64",
            ],
            b"!!!! this is not base64 ====\r\n",
        ),
        _msg(
            [
                b"Message-ID: " + _id("cs", 1, seed),
                b"Content-Type: text/html; charset=utf-16",
                b"Content-Transfer-Encoding: quoted-printable",
            ],
            b"=ZZ=0 =\r\n\xd8\x00\r\n",
        ),
    ]


def missing_and_duplicate_ids(n: int, seed: int) -> list[bytes]:
    dup = _id("dup", 0, seed)
    return [
        _msg([b"Subject: no id at all"]),
        _msg([b"Message-ID: " + dup, b"Subject: first"]),
        _msg([b"Message-ID: " + dup, b"Subject: second, same id", b"In-Reply-To: " + dup]),
        _msg([b"Message-ID: <" + b"x" * 5000 + b"@long.test>", b"References: <>"]),
        b"not a message at all, no headers, no blank line",
        b"",
    ]


HOSTILE_KINDS: dict[str, Callable[[int, int], list[bytes]]] = {
    "deep_chain": deep_chain,
    "long_references": long_references,
    "reference_cycle": reference_cycle,
    "deep_multipart": deep_multipart,
    "huge_headers": huge_headers,
    "nul_and_bad_bytes": nul_and_bad_bytes,
    "bad_charsets": bad_charsets,
    "missing_and_duplicate_ids": missing_and_duplicate_ids,
}
#: The sizes the issue names; hypothesis draws at or below them.
FULL_SIZE = {
    "deep_chain": 300,
    "long_references": 10_000,
    "reference_cycle": 50,
    "deep_multipart": 1_000,
    "huge_headers": 3_000,  # KiB
    "nul_and_bad_bytes": 1,
    "bad_charsets": 1,
    "missing_and_duplicate_ids": 1,
}


@st.composite
def hostile_mailboxes(draw: st.DrawFn) -> list[bytes]:
    """A mix of hostile kinds, each at a drawn size (the worst sizes included)."""
    kinds = draw(st.lists(st.sampled_from(sorted(HOSTILE_KINDS)), min_size=1, max_size=4))
    out: list[bytes] = []
    for seed, kind in enumerate(kinds):
        top = FULL_SIZE[kind]
        # Mixed sizes up to a tenth of the worst; the worst sizes run in a fixed test.
        n = draw(st.integers(min_value=1, max_value=max(1, top // 10)))
        out += HOSTILE_KINDS[kind](n, seed)
    return out


#: Folder names a hostile server may send: lone surrogates (undecodable modified UTF-7).
hostile_folders = st.sampled_from(["INBOX", "Archive/\udcff\udcfe", "\ud800", "Junk \x00 mail"])


def hostile_corpus() -> list[bytes]:
    """Every kind at full size once (the deep chain shorter: Dovecot stores each message)."""
    out: list[bytes] = []
    for seed, (kind, build) in enumerate(HOSTILE_KINDS.items()):
        out += build(100 if kind == "deep_chain" else FULL_SIZE[kind], seed)
    return out
