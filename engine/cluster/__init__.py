"""Several GPUs and several machines behind one studio (docs/cluster.md).

Each GPU is a worker: a lane of the studio's queue (engine/jobs.py) that runs generations on an
engine of its own, in this process (other GPUs of this machine) or in a Ray actor (other
machines, `--cluster`). Workers save nothing: what they would save comes back with the pictures
and the studio saves it, so there is one outputs folder and one history. Ray is imported only by
ray_cluster.py, which only `--cluster` and `--worker` load.
"""
