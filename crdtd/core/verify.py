"""``crdtctl verify`` inside a node: asking every live peer for its reports, answering
theirs, and telling the caller once all answered or the time is up.

A report (`crdtd.core.reports`) per variable names what a node holds; comparing them is
the daemon's business. Making our own reports walks every op changed since the last
time, so a `Reporter` makes them a bounded slice per step: verifies and peers' digest
requests that arrive while a job runs wait for the next job, so a report never predates
its request by more than the op being hashed when it came.

Like `crdtd.core.sync`, a `Verifier` never calls into the node: each call returns the
effects the node must carry out, in order (`AskReports`, `SendReports`, `Finished`,
`Count`), and the counters to report on come in as an argument.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from crdtd.core.counters import Counter
from crdtd.core.effects import Count
from crdtd.core.ids import Address, Origin
from crdtd.core.messages import DigestReply, VariableReport
from crdtd.core.peers import Peer
from crdtd.core.reports import Reporter

__all__ = [
    "DIGEST_MIN_INTERVAL_S",
    "AskReports",
    "Count",
    "Effect",
    "Finished",
    "SendReports",
    "Verifier",
]

DIGEST_MIN_INTERVAL_S = 0.25  # crdtctl verify --wait asks every 0.5 s at most


@dataclass(frozen=True, slots=True)
class AskReports:
    """Send a DigestRequest named *token* to each of *addresses*."""

    token: int
    addresses: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class SendReports:
    """Answer the DigestRequest *token* from *address* with *reports*."""

    token: int
    reports: list[VariableReport]
    address: Address


@dataclass(frozen=True, slots=True)
class Finished:
    """A verify is over: *reports* per node id that answered, and who stayed *silent*."""

    ticket: int
    reports: dict[str, dict[str, VariableReport]]
    silent: tuple[str, ...]


Effect = AskReports | SendReports | Finished | Count


@dataclass(slots=True)
class _Verify:
    """A verify in progress: who we wait for, and the pages received."""

    deadline: float
    waiting: dict[Origin, int | None]  # peer -> pages expected (None: none seen yet)
    pages: dict[Origin, set[int]] = field(default_factory=dict)
    reports: dict[Origin, dict[str, VariableReport]] = field(default_factory=dict)


class Verifier:
    """The verifies of one node, and its answers to other nodes' digest requests."""

    def __init__(self, origin: Origin, timeout_s: float, now: float) -> None:
        self.origin = origin  # the node sets the one it chose before the first input
        self._timeout_s = timeout_s
        self._verifies: dict[int, _Verify] = {}
        self._served: dict[Origin, float] = {}  # peer -> when we last answered it
        self._reporter = Reporter()
        self._waiters: list[tuple[int, Address | None]] = []  # served by the running job
        self._waiters_next: list[tuple[int, Address | None]] = []  # by the next job
        self._due = now  # while a job runs: when handle_timer must continue it
        self._effects: list[Effect] = []

    # --- inputs -------------------------------------------------------------------

    def start(
        self, ticket: int, live: list[Peer], counters: dict[str, Counter], now: float
    ) -> list[Effect]:
        """Ask every live peer for its reports; *ticket* names the `Finished`."""
        verify = _Verify(now + self._timeout_s, {})
        for peer in live:
            verify.waiting[peer.origin] = None
        self._effects.append(AskReports(ticket, tuple(peer.address for peer in live)))
        self._verifies[ticket] = verify
        self._waiters_next.append((ticket, None))  # our own reports, when made
        self._advance(counters, now)
        self._finish(now)
        return self._drain()

    def on_request(
        self, token: int, peer: Peer, counters: dict[str, Counter], now: float
    ) -> list[Effect]:
        """Answer with our reports, at most once per `DIGEST_MIN_INTERVAL_S` per peer:
        a report walks every op changed since the last, so a peer asking in a loop must
        not keep us hashing; and only to a peer that announced itself, since a reply is
        many times a request. The answer goes out once the reports are made."""
        if peer.announced_at is None:
            self._effects.append(Count("verify_requests_from_strangers"))
        elif now - self._served.get(peer.origin, -DIGEST_MIN_INTERVAL_S) < DIGEST_MIN_INTERVAL_S:
            self._effects.append(Count("verify_requests_limited"))
        else:
            self._served[peer.origin] = now
            self._waiters_next.append((token, peer.address))
            self._advance(counters, now)
            self._effects.append(Count("verify_requests_served"))
        return self._drain()

    def on_reply(self, message: DigestReply, peer: Peer, now: float) -> list[Effect]:
        verify = self._verifies.get(message.token)
        if verify is None or peer.origin not in verify.waiting:
            return []
        verify.waiting[peer.origin] = message.pages
        verify.pages.setdefault(peer.origin, set()).add(message.page)
        reports = verify.reports.setdefault(peer.origin, {})
        for report in message.reports:
            earlier = reports.get(report.variable)
            if earlier is not None:  # a variable split across pages: join its marks
                report = dataclasses.replace(report, marks=earlier.marks + report.marks)
            reports[report.variable] = report
        self._finish(now)
        return self._drain()

    def handle_timer(self, counters: dict[str, Counter], now: float) -> list[Effect]:
        """Make the reports a slice further, and end the verifies that are done."""
        self._advance(counters, now)
        self._finish(now)
        return self._drain()

    def forget(self, origin: Origin) -> None:
        """A peer is gone: a request from its next incarnation is answered at once."""
        self._served.pop(origin, None)

    def deadlines(self) -> list[float]:
        deadlines = [verify.deadline for verify in self._verifies.values()]
        if self._reporter.busy:
            deadlines.append(self._due)  # due at once: the job goes on next step
        return deadlines

    # --- the work -----------------------------------------------------------------

    def _advance(self, counters: dict[str, Counter], now: float) -> None:
        """Make the reports a bounded slice further; once made, hand them to whoever
        waits: our own verifies, and peers' digest requests."""
        if not self._reporter.busy:
            if not self._waiters_next:
                return
            self._waiters, self._waiters_next = self._waiters_next, []
            self._reporter.start(counters)
        reports = self._reporter.advance(counters)
        self._due = now
        if reports is None:
            return
        waiters, self._waiters = self._waiters, []
        for token, address in waiters:
            if address is not None:
                self._effects.append(SendReports(token, reports, address))
            elif (verify := self._verifies.get(token)) is not None:
                verify.reports[self.origin] = {r.variable: r for r in reports}
        if self._waiters_next:  # begun now, worked on from the next step
            self._waiters, self._waiters_next = self._waiters_next, []
            self._reporter.start(counters)

    def _finish(self, now: float) -> None:
        for ticket, verify in list(self._verifies.items()):
            silent = [
                origin
                for origin, pages in verify.waiting.items()
                if pages is None or len(verify.pages.get(origin, ())) < pages
            ]
            if self.origin not in verify.reports or (silent and now < verify.deadline):
                continue  # our own reports come first, within a few steps
            del self._verifies[ticket]
            for origin in silent:
                verify.reports.pop(origin, None)
            reports = {origin.node_id: held for origin, held in verify.reports.items()}
            names = tuple(origin.node_id for origin in silent)
            self._effects.append(Finished(ticket, reports, names))

    def _drain(self) -> list[Effect]:
        effects, self._effects = self._effects, []
        return effects
