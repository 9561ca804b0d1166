"""bench/agents.py runs end to end: through /v1/responses a turn feeds only its new input
(the question, the tool's output) whatever the turn, through chat completions without reuse it
feeds the whole history; the mask cost comes from the engine's constraint workers."""

from bench.agents import run


def test_bench_agents_feeds_only_new_input_through_responses():
    result = run(["--turns", "3", "--repeats", "1"])
    responses, chat = result["responses"], result["chat_no_reuse"]
    assert [t["turn"] for t in responses] == [1, 2, 3]
    for turn in responses[1:]:  # every request continues the one before: only its input
        assert turn["call_cached_tokens"] > 0 and turn["answer_cached_tokens"] > 0
        assert turn["call_fed_tokens"] < 40 and turn["answer_fed_tokens"] < 60
    fed = [t["call_fed_tokens"] for t in chat]
    assert fed[0] < fed[1] < fed[2] and all(t["call_cached_tokens"] == 0 for t in chat)
    summary = result["summary"]
    assert summary["ttft_ratio_turn3_vs_turn1_responses"] > 0
    assert summary["fed_tokens_turn3_chat"] > 3 * summary["fed_tokens_turn3_responses"]
    assert result["masks"]["tokens"] > 0 and summary["mask_us_per_token_p50"] > 0
