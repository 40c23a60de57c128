"""The Redis Cluster test infrastructure works: slots, hash tags, Lua across slots, failover.

These tests pin what the store must respect before it runs on a cluster: a script may touch
only keys of one slot (declared in ``KEYS``), keys spread over several primaries, and a replica
promoted after its primary dies holds what was acknowledged with ``WAIT``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ClusterCrossSlotError, RedisClusterException, ResponseError

from tests.cluster import SLOTS, LocalRedisCluster

RedisCluster = aioredis.RedisCluster
SET_BOTH = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1"
GET_UNDECLARED = "return redis.call('GET', ARGV[1])"
SESSIONS = 24  # hash tags enough to reach all 3 primaries (CRC16 and the slot split are fixed)


def session_key(session: int, name: str = "state") -> str:
    return f"cb:{{acme:s{session}}}:{name}"


def node_of(client: RedisCluster, key: str) -> ClusterNode:
    """The primary serving ``key``'s slot, per the client's slot map (filled by any command)."""
    node = client.get_node_from_key(key)
    assert node is not None, f"no node serves {key}"
    return node


async def dbsize(client: RedisCluster, node: ClusterNode) -> int:
    return int(await client.dbsize(target_nodes=node))


async def write_on_every_primary(client: RedisCluster) -> None:
    for session in range(SESSIONS):
        await client.set(session_key(session), "v")


async def test_the_cluster_has_three_primaries_covering_every_slot(
    cluster_client: RedisCluster,
) -> None:
    primaries = cluster_client.get_primaries()
    if os.environ.get("BRIDGE_TEST_REDIS_CLUSTER_URL"):
        assert len(primaries) >= 3  # a cluster we did not start: Redis Cluster's minimum
    else:
        assert len(primaries) == 3
    for node in cluster_client.get_nodes():
        info = await cluster_client.cluster_info(target_nodes=node)
        assert info["cluster_state"] == "ok", node
        assert int(info["cluster_slots_assigned"]) == int(info["cluster_slots_ok"]) == SLOTS
        assert int(info["cluster_size"]) == len(primaries)


async def test_keys_with_different_hash_tags_land_on_several_primaries(
    cluster_client: RedisCluster,
) -> None:
    keys = [session_key(session) for session in range(SESSIONS)]
    for key in keys[:3]:  # the client's CRC16 agrees with the server's
        assert await cluster_client.cluster_keyslot(key) == cluster_client.keyslot(key)
    one_session = {cluster_client.keyslot(session_key(1, name)) for name in ("state", "pre", "out")}
    assert len(one_session) == 1  # one hash tag, one slot

    owners = {key: node_of(cluster_client, key) for key in keys}
    assert len(set(owners.values())) > 1
    await write_on_every_primary(cluster_client)
    for node in set(owners.values()):  # the keys really live where the slot map says
        assert await dbsize(cluster_client, node) == list(owners.values()).count(node)


async def test_a_script_may_touch_two_keys_with_one_hash_tag(
    cluster_client: RedisCluster,
) -> None:
    first, second = session_key(1, "state"), session_key(1, "out")
    assert await cluster_client.eval(SET_BOTH, 2, first, second, "v") == 1
    assert await cluster_client.mget(first, second) == [b"v", b"v"]


async def test_a_script_touching_two_slots_fails_with_crossslot(
    cluster_client: RedisCluster,
) -> None:
    """What the store must avoid: the client refuses it, and so does the server."""
    first, second = session_key(1), session_key(2)
    assert cluster_client.keyslot(first) != cluster_client.keyslot(second)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await cluster_client.eval(SET_BOTH, 2, first, second, "v")
    node = node_of(cluster_client, first)
    with pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
        await cluster_client.execute_command(
            "EVAL", SET_BOTH, 2, first, second, "v", target_nodes=node
        )
    assert await cluster_client.exists(first, second) == 0


async def test_a_script_cannot_reach_an_undeclared_key_on_another_primary(
    cluster_client: RedisCluster,
) -> None:
    """Deriving keys inside Lua (not passing them in KEYS) breaks as soon as they are remote."""
    declared = session_key(1)
    elsewhere = next(
        session_key(session)
        for session in range(2, 2 + SESSIONS)
        if node_of(cluster_client, session_key(session)) != node_of(cluster_client, declared)
    )
    with pytest.raises(ResponseError, match="non local key"):
        await cluster_client.eval(GET_UNDECLARED, 1, declared, elsewhere)


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_every_primary_is_empty_when_a_test_starts(
    cluster_client: RedisCluster, turn: str
) -> None:
    """Each turn fills every primary; the second turn proves the fixture emptied them."""
    primaries = cluster_client.get_primaries()
    assert [await dbsize(cluster_client, node) for node in primaries] == [0] * len(primaries)
    await write_on_every_primary(cluster_client)
    assert all([await dbsize(cluster_client, node) for node in primaries])


# -- failover: a cluster of its own, 3 primaries with one replica each -------------------------


def client_for(addresses: list[str]) -> RedisCluster:
    nodes = [
        ClusterNode(host, int(port)) for host, _, port in (a.partition(":") for a in addresses)
    ]
    return RedisCluster(startup_nodes=nodes)


async def write_acknowledged(client: RedisCluster, values: Mapping[str, str]) -> None:
    """SET every key, then ``WAIT 1`` on each primary written to, on the connection that wrote.

    WAIT only covers writes made on its own connection: a WAIT sent through the client's pool
    may use another connection and return at once. A cluster pipeline sends a node's commands
    on one connection, in order, so the WAIT queued after that node's SETs covers them.
    """
    await client.initialize()
    pipe = client.pipeline(transaction=False)
    nodes = {node_of(client, key) for key in values}
    for key, value in values.items():
        pipe.set(key, value)
    for node in nodes:
        pipe.execute_command("WAIT", 1, 1000, target_nodes=node)
    replies = await pipe.execute()
    assert replies[: len(values)] == [True] * len(values)
    assert replies[len(values) :] == [1] * len(nodes), "a replica did not acknowledge"


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_replica_takes_over_when_its_master_dies(
    failover_cluster: LocalRedisCluster,
) -> None:
    cluster = failover_cluster
    values = {session_key(session): f"v{session}" for session in range(SESSIONS)}
    victim = session_key(0)
    before = client_for(cluster.live_addresses)  # lives through the failover, as the bridge's
    try:
        await write_acknowledged(before, values)

        started = time.monotonic()
        old_primary = cluster.kill_master_of(victim)
        new_primary = cluster.wait_for_failover(victim, old_primary)
        failover_s = time.monotonic() - started
        print(f"failover {old_primary} -> {new_primary} in {failover_s:.2f}s")

        fresh = client_for(cluster.live_addresses)
        try:
            assert await fresh.mget_nonatomic(list(values)) == [v.encode() for v in values.values()]
            assert node_of(fresh, victim).name == new_primary
        finally:
            await fresh.aclose()
        assert await before.get(victim) == values[victim].encode()  # it found the new primary
    finally:
        await before.aclose()

    cluster.restart(old_primary)
    assert cluster.role(old_primary) == "slave"
    assert cluster.primary_of(victim) == new_primary
