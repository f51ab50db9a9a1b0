"""core: what every stage shares and nothing of ours underneath: errors, atomic file I/O (local
and Cloud Storage FUSE), the machine's CPU probing, step timing, and the result types."""
