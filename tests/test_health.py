"""ServerHealth: ejection with a cooldown, restore, and the failover order it produces."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marsconn.run import health as health_module
from marsconn.run.health import ServerHealth, default_health


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(clock: Clock) -> ServerHealth:
    return ServerHealth(clock=clock)


def same(x: str) -> str:
    return x


# --- eject / is_ejected / restore ----------------------------------------------------------------


def test_nothing_is_ejected_at_first(reg: ServerHealth) -> None:
    assert not reg.is_ejected("ws://a")
    assert reg.restore("ws://a") is False


def test_eject_until_the_cooldown_ends(reg: ServerHealth, clock: Clock) -> None:
    assert reg.eject("ws://a", 30) is True
    assert reg.is_ejected("ws://a")
    assert not reg.is_ejected("ws://b")
    clock.now += 29.9
    assert reg.is_ejected("ws://a")
    clock.now += 0.1  # exactly at the end: no longer ejected
    assert not reg.is_ejected("ws://a")


def test_eject_again_while_ejected_is_not_fresh_and_extends(
    reg: ServerHealth, clock: Clock
) -> None:
    assert reg.eject("ws://a", 10) is True
    clock.now += 5
    assert reg.eject("ws://a", 10) is False
    clock.now += 7  # 12 s after the first ejection, 7 s after the second
    assert reg.is_ejected("ws://a")
    clock.now += 3
    assert not reg.is_ejected("ws://a")


def test_eject_after_expiry_is_fresh_again(reg: ServerHealth, clock: Clock) -> None:
    assert reg.eject("ws://a", 10) is True
    clock.now += 10
    assert reg.eject("ws://a", 10) is True


@pytest.mark.parametrize("cooldown", [0, 0.0, -5])
def test_non_positive_cooldown_never_ejects(reg: ServerHealth, cooldown: float) -> None:
    assert reg.eject("ws://a", cooldown) is False
    assert not reg.is_ejected("ws://a")
    assert reg.reorder(["ws://a", "ws://b"], same) == ["ws://a", "ws://b"]


def test_restore_forgets_an_ejection(reg: ServerHealth) -> None:
    reg.eject("ws://a", 30)
    assert reg.restore("ws://a") is True
    assert not reg.is_ejected("ws://a")
    assert reg.restore("ws://a") is False


def test_restore_after_the_cooldown_ended_reports_false(reg: ServerHealth, clock: Clock) -> None:
    reg.eject("ws://a", 10)
    clock.now += 11
    assert not reg.is_ejected("ws://a")
    assert reg.restore("ws://a") is False


def test_clear_forgets_everything(reg: ServerHealth) -> None:
    reg.eject("ws://a", 30)
    reg.eject("ws://b", 30)
    reg.clear()
    assert not reg.is_ejected("ws://a")
    assert not reg.is_ejected("ws://b")
    assert reg.restore("ws://a") is False


# --- reorder -------------------------------------------------------------------------------------


def test_reorder_puts_ejected_servers_last(reg: ServerHealth) -> None:
    reg.eject("b", 30)
    assert reg.reorder(["a", "b", "c", "d"], same) == ["a", "c", "d", "b"]


def test_reorder_orders_ejected_servers_by_expiry(reg: ServerHealth, clock: Clock) -> None:
    reg.eject("a", 50)  # ends at +50
    reg.eject("b", 10)  # ends at +10
    clock.now += 5
    reg.eject("d", 20)  # ends at +25
    assert reg.reorder(["a", "b", "c", "d", "e"], same) == ["c", "e", "b", "d", "a"]


def test_reorder_never_drops_a_server(reg: ServerHealth) -> None:
    for s in "abc":
        reg.eject(s, 30)
    assert sorted(reg.reorder(["a", "b", "c"], same)) == ["a", "b", "c"]
    assert reg.reorder(["a"], same) == ["a"]
    assert reg.reorder([], same) == []


def test_reorder_after_expiry_restores_the_order_and_purges(
    reg: ServerHealth, clock: Clock
) -> None:
    reg.eject("a", 10)
    assert reg.reorder(["a", "b"], same) == ["b", "a"]
    clock.now += 10
    assert reg.reorder(["a", "b"], same) == ["a", "b"]
    # The expired entry was purged: nothing is left to restore.
    assert reg.restore("a") is False


def test_reorder_uses_the_key_and_returns_the_items(reg: ServerHealth) -> None:
    @dataclass(frozen=True)
    class Item:
        url: str

    items = [Item("ws://a"), Item("ws://b"), Item("ws://c")]
    reg.eject("ws://a", 30)
    assert reg.reorder(items, lambda i: i.url) == [items[1], items[2], items[0]]


def test_reorder_does_not_change_its_input(reg: ServerHealth) -> None:
    items = ["a", "b"]
    reg.eject("a", 30)
    reg.reorder(items, same)
    assert items == ["a", "b"]


@given(
    order=st.permutations([f"s{i}" for i in range(6)]),
    cooldowns=st.dictionaries(
        st.sampled_from([f"s{i}" for i in range(6)]),
        st.floats(min_value=0.5, max_value=100, allow_nan=False),
    ),
    elapsed=st.floats(min_value=0, max_value=120, allow_nan=False),
)
def test_reorder_properties(order: list[str], cooldowns: dict[str, float], elapsed: float) -> None:
    clock = Clock(0.0)
    reg = ServerHealth(clock=clock)
    for server, cooldown in cooldowns.items():
        reg.eject(server, cooldown)
    clock.now = elapsed
    result = reg.reorder(order, same)
    assert sorted(result) == sorted(order)
    ejected = [s for s in order if cooldowns.get(s, 0) > elapsed]
    healthy = [s for s in order if s not in ejected]
    assert result[: len(healthy)] == healthy
    tail = result[len(healthy) :]
    assert sorted(tail) == sorted(ejected)
    assert [cooldowns[s] for s in tail] == sorted(cooldowns[s] for s in tail)
    for s in order:
        assert reg.is_ejected(s) == (s in ejected)


# --- threads and the default instance ------------------------------------------------------------


def test_thread_safety_smoke() -> None:
    reg = ServerHealth()
    servers = [f"ws://s{i}" for i in range(5)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(400):
                server = rng.choice(servers)
                op = rng.randrange(4)
                if op == 0:
                    reg.eject(server, rng.choice([0.0001, 30]))
                elif op == 1:
                    reg.restore(server)
                elif op == 2:
                    reg.is_ejected(server)
                else:
                    result = reg.reorder(servers, same)
                    assert sorted(result) == sorted(servers), result
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_default_health_is_a_process_wide_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_module, "_default", None)
    seen: list[ServerHealth] = []

    def grab() -> None:
        seen.append(default_health())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = default_health()
    assert isinstance(first, ServerHealth)
    assert all(h is first for h in seen)
    assert default_health() is first
