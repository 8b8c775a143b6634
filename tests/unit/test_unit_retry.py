"""The retry policy: exponential delays, limits, and which policy applies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.retry import RetryPolicies, RetryPolicy
from shared.settings import ChildSettings


def test_default_policy_waits_1_4_16_seconds_then_stops() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(a) for a in (1, 2, 3, 4)] == [1000, 4000, 16_000, None]


def test_delays_are_capped_and_never_zero() -> None:
    policy = RetryPolicy(max_retries=10, backoff=10, factor=10, max_delay=60)
    assert policy.delay_ms(1) == 10_000
    assert policy.delay_ms(5) == 60_000
    assert RetryPolicy(backoff=0.01, factor=1).delay_ms(1) == 10


def test_no_retries_means_the_first_failure_is_final() -> None:
    assert RetryPolicy(max_retries=0).delay_ms(1) is None


def test_the_most_specific_policy_applies_whole() -> None:
    policies = RetryPolicies(
        default=RetryPolicy(max_retries=5),
        pools={"bazi": RetryPolicy(backoff=2)},
        cmds={"verify_chart": RetryPolicy(max_retries=0)},
    )
    assert policies.for_task("child", "echo").max_retries == 5
    assert policies.for_task("bazi", "echo").backoff == 2
    assert policies.for_task("bazi", "echo").max_retries == 3  # not merged with the default
    assert policies.for_task("bazi", "verify_chart").max_retries == 0
    assert policies.for_task("child", None).max_retries == 5


def test_policies_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_RETRY", '{"pools": {"bazi": {"max_retries": 1}}}')
    settings = ChildSettings()
    assert settings.retry.for_task("bazi", None).max_retries == 1
    assert settings.retry.for_task("child", None) == RetryPolicy()


@pytest.mark.parametrize(
    "bad",
    ['{"default": {"max_retries": -1}}', '{"default": {"factor": 0.5}}', '{"dflt": {}}'],
)
def test_bad_policies_are_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("RELAY_RETRY", bad)
    with pytest.raises(ValidationError):
        ChildSettings()


def test_the_waits_of_a_pool_are_its_policys_and_every_commands() -> None:
    policies = RetryPolicies.model_validate(
        {"default": {"max_retries": 3}, "pools": {"p": {"max_retries": 2, "backoff": 2}},
         "cmds": {"c": {"max_retries": 1, "backoff": 0.5}, "never": {"max_retries": 0}}}
    )  # fmt: skip
    assert policies.delays_ms("p") == {2000, 8000, 500}
    assert policies.delays_ms("other") == {1000, 4000, 16000, 500}
