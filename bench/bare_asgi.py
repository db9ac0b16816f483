"""A bare ASGI app for Daphne, without Django or Channels: the ceiling for any app under Daphne.

    daphne bench.bare_asgi:application

Accepts every WebSocket, answers text as ws/ does and binary with the same bytes. The
benchmark runs it under stock Daphne, so its figures are what Daphne itself costs.
"""


async def application(scope, receive, send) -> None:
    if scope["type"] != "websocket":
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": f"Server: Hello. You said: {message['text']}"})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return
