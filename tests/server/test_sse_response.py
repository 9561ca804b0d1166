"""retserve's SSE response skips sse-starlette's per-send cancel scope when no send timeout is
set; the override must still name the library's method, or it silently stops applying."""

from sse_starlette.sse import EventSourceResponse

from server.streaming import SSEResponse, sse_response


def test_the_send_override_replaces_a_method_of_the_library():
    assert "_send_with_timeout" in vars(EventSourceResponse)
    assert "_send_with_timeout" in vars(SSEResponse)
    response = sse_response(iter(()), keepalive_seconds=15)
    assert isinstance(response, SSEResponse) and response.send_timeout is None
