"""bench/turns.py runs end to end: the follow-up turn's history is covered by the stored state
on the reusing server and fed whole on the other; every server (streaming only, and storing
states at every stream interval) streams every token."""

from bench.turns import run


def test_bench_turns_reuses_states_and_streams_every_token():
    result = run(["--lengths", "64,512", "--repeats", "1", "--streams", "3", "--tokens", "9",
                  "--stream-intervals", "1,4"])
    reuse, plain = result["ttft_reuse"], result["ttft_no_reuse"]
    assert reuse[512]["history_tokens"] > 4 * reuse[64]["history_tokens"]
    assert all(r["ttft_ms_p50"] > 0 for r in (*reuse.values(), *plain.values()))
    assert result["http"][1]["tokens"] == 3 * 9  # the streaming-only server
    for interval in (1, 4):
        assert result["http_saving_states"][interval]["tokens"] == 3 * 9
    assert result["engine"]["tokens"] == 3 * 9
    session = result["ttft_session"]
    assert session[512]["history_tokens"] == reuse[512]["history_tokens"]
    assert set(result["summary"]) == {"ttft_ratio_0k_vs_64_reuse", "ttft_ratio_0k_vs_64_session",
                                      "ttft_ratio_0k_vs_64_no_reuse", "http_vs_engine_tps",
                                      "http_vs_engine_tps_saving_states",
                                      "http_vs_engine_tps_saving_states_stream_interval_4"}
