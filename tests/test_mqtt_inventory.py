"""The inventory and samples over MQTT, on a real mosquitto with the shipped ACL: any
authorised client reads the levels and the samples; refill and set are an operator's (the
agent decides from the broker-enforced username, `labctl serve --operator NAME`), an AI
client's attempt is refused and changes nothing; bad input gets an error reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from mqtt_broker import SHIPPED_ACL, MosquittoBroker
from mqtt_helpers import serve_bench

from labctl.client import BenchClient, CommandError

USERS = {"bench-a": "pw-a", "ai-planner": "pw-ai", "operator-alice": "pw-alice"}
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def secure_broker(tmp_path: Path):
    with MosquittoBroker(tmp_path / "broker", users=USERS, acl=SHIPPED_ACL) as b:
        yield b


def dmc(doc: dict) -> dict:
    [row] = [x for x in doc["levels"] if x["holding"] == "res_dmc"]
    return row


async def test_refill_and_set_are_for_operators_only(secure_broker, tmp_path) -> None:
    async with serve_bench(secure_broker.url, tmp_path / "runs", bench_id="bench-a",
                           username="bench-a", password="pw-a",
                           operators=("operator-alice",)) as served, \
            BenchClient(secure_broker.url, "bench-a", username="ai-planner",
                        password="pw-ai") as ai, \
            BenchClient(secure_broker.url, "bench-a", username="operator-alice",
                        password="pw-alice") as op:
        before = await ai.inventory()
        assert dmc(before)["amount"] == pytest.approx(200) and dmc(before)["unit"] == "mL"
        with pytest.raises(CommandError) as err:
            await ai.inventory("refill", vessel="res_dmc", amount="10 mL", lot="AI-LOT")
        assert err.value.code == "forbidden" and "only an operator" in err.value.message
        with pytest.raises(CommandError) as err:
            await ai.inventory("set", vessel="res_dmc", material="DMC", amount="1 mL")
        assert err.value.code == "forbidden"
        assert dmc(await ai.inventory())["amount"] == pytest.approx(200)

        after = await op.inventory("refill", vessel="res_dmc", amount="10 mL", lot="DMC-77")
        row = dmc(after)
        assert row["amount"] == pytest.approx(210) and row["lot"] == "DMC-77"
        assert any(e["kind"] == "refill" and e["who"] == "operator-alice"
                   for e in after["events"])
        after = await op.inventory("set", vessel="res_dmc", material="DMC", amount="50 mL")
        assert dmc(after)["amount"] == pytest.approx(50)
        # the bench in the agent's process sees the same store
        assert served.bench.stock.store.level_map()["res_dmc"]["DMC"][0] == pytest.approx(
            0.05)

        with pytest.raises(CommandError) as err:
            await op.inventory("refill", vessel="res_dmc", amount="500 mL")
        assert err.value.code == "refused" and "would not fit" in err.value.message
        with pytest.raises(CommandError) as err:
            await op.inventory("refill", vessel="res_dmc")
        assert err.value.code == "bad_payload"
        assert dmc(await op.inventory())["amount"] == pytest.approx(50)

        assert await ai.samples() == ()
        with pytest.raises(CommandError) as err:
            await ai.samples("show", "S-bench-a-000001")
        assert err.value.code == "not_found"
