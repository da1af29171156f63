"""The byte path: many parts of many files in flight, each part checked as it arrives.

`engine` runs the jobs (`plan`) under one semaphore and verifies and commits each file;
`parts` downloads one part with its retries; `http` speaks the HTTP/1.1 of one ranged GET over
`framing` (pure) and `buffers` (two buffers and their write order); `workers` spreads parts
over processes (FETCH_WORKERS).
"""
