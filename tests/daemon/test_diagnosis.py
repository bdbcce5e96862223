"""The ``net-test`` checklist and the /proc readers, on canned inputs."""

from __future__ import annotations

from pathlib import Path

from crdtd.cli import render
from crdtd.daemon.diagnosis import (
    PROC_NET,
    STATUSES,
    NetInfo,
    Unreadable,
    igmp_groups,
    interface_flags,
    net_checks,
    udp_drops,
)

UP = 0x1003  # IFF_UP | IFF_BROADCAST | IFF_MULTICAST
NET = NetInfo("eth0", "10.0.0.1", "239.255.77.77", 7777, 7778, 1, socket_inodes=(111, 222))

IGMP = """Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter
1\tlo        :     1      V3
\t\t\t\t010000E0     1 0:00000000\t\t0
2\teth0      :     2      V3
\t\t\t\t4D4DFFEF     1 0:00000000\t\t0
\t\t\t\t010000E0     1 0:00000000\t\t0
"""

_SOCKETS = (  # /proc/net/udp rows: local, remote, ..., inode (field 10), ..., drops (13)
    ("0100000A:1E62", 111, 3),
    ("4D4DFFEF:1E61", 222, 0),
    ("00000000:0035", 333, 9),
)
UDP = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    + ("timeout inode ref pointer drops\n")
    + "".join(
        f"  {n}: {local} 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 "
        f"{inode} 2 0000000000000000 {drops}\n"
        for n, (local, inode, drops) in enumerate(_SOCKETS)
    )
)


def peer(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "node_id": "n2",
        "incarnation": 1700000000,
        "superseded": False,
        "forgotten_in_s": 9.8,
        "address": ("10.0.0.2", 7778),
        "known_s": 60.0,
        "multicast_ago_s": 0.4,
        "last_seen_s": 0.2,
        "suspected": False,
        "unicast_copies": 0,
        "unicast_copy_ago_s": None,
    }
    return {**base, **overrides}


def view(*peers: dict[str, object], seeds: list[tuple[str, int]] | None = None) -> dict:
    return {"peers": list(peers), "seeds": seeds or [], "quiet_s": 3.0, "inbox_dropped": 0}


def statuses(checks: list[dict[str, str]]) -> dict[str, str]:
    return {check["check"]: check["status"] for check in checks}


def test_igmp_groups_of_one_interface(tmp_path: Path) -> None:
    (tmp_path / "igmp").write_text(IGMP)
    assert igmp_groups("eth0", tmp_path) == ["239.255.77.77", "224.0.0.1"]
    assert igmp_groups("lo", tmp_path) == ["224.0.0.1"]
    assert igmp_groups("eth1", tmp_path) == []
    missing = igmp_groups("eth0", tmp_path / "missing")
    assert missing == Unreadable(tmp_path / "missing" / "igmp", "No such file or directory")


def test_udp_drops_of_our_sockets_only(tmp_path: Path) -> None:
    (tmp_path / "udp").write_text(UDP)
    assert udp_drops((111, 222), tmp_path) == {111: 3, 222: 0}


def test_a_healthy_peer_gives_all_ok() -> None:
    checks = net_checks(NET, view(peer()), ["239.255.77.77"], {111: 0}, UP)
    assert set(statuses(checks).values()) == {"OK"}


def test_unreadable_sources_make_their_checks_unknown_never_ok(tmp_path: Path) -> None:
    """As under a sandbox that hides them: nothing read, so nothing is claimed OK."""
    proc = tmp_path / "proc"  # no igmp, no udp in it
    checks = net_checks(
        NET,
        view(peer()),
        igmp_groups("eth0", proc),
        udp_drops((111,), proc),
        interface_flags("nosuchif9"),
    )
    result = statuses(checks)
    assert result["membership"] == result["receive drops"] == result["interface"] == "UNKNOWN"
    assert set(result.values()) <= set(STATUSES)
    details = {check["check"]: check["detail"] for check in checks}
    assert f"cannot read {proc / 'udp'}: No such file or directory" in details["receive drops"]
    assert f"cannot read {proc / 'igmp'}" in details["membership"]
    assert "cannot read the flags of nosuchif9: No such device" in details["interface"]
    text = render.text(
        "net-test",
        {
            "ok": False,
            "interface": "eth0",
            "address": "10.0.0.1",
            "group": "239.255.77.77:7777",
            "unicast_port": 7778,
            "ttl": 1,
            "checks": checks,
        },
    )
    assert "\nUNKNOWN  receive drops " in text and "no datagram dropped" not in text


def test_unreadable_udp_with_inbox_drops_still_warns(tmp_path: Path) -> None:
    checks = net_checks(
        NET,
        {**view(peer()), "inbox_dropped": 3},
        ["239.255.77.77"],
        udp_drops((111,), tmp_path),
        UP,
    )
    assert statuses(checks)["receive drops"] == "WARN"


def test_the_daemon_reads_its_own_network_view() -> None:
    """/proc/self/net: what ProcSubset=pid leaves visible (it hides /proc/net)."""
    assert Path("/proc/self/net") == PROC_NET
    assert not isinstance(udp_drops((1,)), Unreadable), "readable on this host"
    assert isinstance(interface_flags("lo"), int), "SIOCGIFFLAGS answers for lo"


def test_a_peer_heard_only_by_unicast_fails_with_a_hint() -> None:
    checks = net_checks(NET, view(peer(multicast_ago_s=None)), ["239.255.77.77"], {}, UP)
    (failed,) = [check for check in checks if check["status"] == "FAIL"]
    assert failed["check"] == "n2 multicast"
    assert "reaches us never; we hear only unicast" in failed["detail"]
    assert "224.0.0.0/4" in failed["hint"]
    assert statuses(checks)["n2 hears us"] == "WARN"


def test_a_peer_sending_unicast_copies_does_not_hear_us() -> None:
    checks = net_checks(
        NET, view(peer(unicast_copies=5, unicast_copy_ago_s=0.5)), ["239.255.77.77"], {}, UP
    )
    assert statuses(checks)["n2 hears us"] == "FAIL"


def test_missing_membership_drops_silent_peer_and_dead_seed_are_named() -> None:
    checks = net_checks(
        NET,
        view(peer(suspected=True, last_seen_s=5.0), seeds=[("10.0.0.9", 7778)]),
        ["224.0.0.1"],
        {111: 4},
        UP,
    )
    result = statuses(checks)
    assert result["membership"] == "FAIL"
    assert result["n2 unicast"] == "FAIL"
    assert result["seed 10.0.0.9:7778"] == "FAIL"
    assert result["receive drops"] == "WARN"


def test_no_peers_is_a_warning() -> None:
    assert statuses(net_checks(NET, view(), ["239.255.77.77"], {}, UP))["peers"] == "WARN"


def test_a_down_interface_or_one_without_multicast_fails() -> None:
    assert statuses(net_checks(NET, view(peer()), [], {}, 0x1000))["interface"] == "FAIL"
    assert statuses(net_checks(NET, view(peer()), [], {}, 0x1))["interface"] == "FAIL"


def test_a_restarted_peers_old_incarnation_is_not_a_network_failure() -> None:
    old = peer(incarnation=1, superseded=True, suspected=True, last_seen_s=6.0, forgotten_in_s=4.0)
    checks = net_checks(NET, view(old, peer()), ["239.255.77.77"], {}, UP)
    about_n2 = {name: status for name, status in statuses(checks).items() if "n2" in name}
    assert about_n2 == {
        "n2 restarted": "OK",
        "n2 multicast": "OK",
        "n2 hears us": "OK",
        "n2 unicast": "OK",
    }
    (restarted,) = [check for check in checks if check["check"] == "n2 restarted"]
    assert "forgotten in 4 s" in restarted["detail"]
