"""The reference: a plain `websockets` echo server on uvloop, nothing else.

python -m bench.reference_server PORT
"""

import sys

import uvloop
from websockets.asyncio.server import serve


async def echo(connection) -> None:
    async for message in connection:
        await connection.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, max_size=None, compression=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
