"""The floor: a minimal asyncio relay with no framework (and no validation, ids, buffer or state)."""
import argparse
import asyncio

writers: set[asyncio.StreamWriter] = set()
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Connection: keep-alive\r\n\r\n")
CREATED = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ")[:2]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if method == b"POST" and path == b"/publish":
                frame = b"data: " + body + b"\n\n"
                for w in list(writers):
                    if w.transport.is_closing():
                        writers.discard(w)
                    else:
                        w.write(frame)
                writer.write(CREATED)
            elif path == b"/stream":
                writer.write(STREAM_HEAD)
                writers.add(writer)
                await reader.read()          # until the client goes
                writers.discard(writer)
                return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writers.discard(writer)
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
