"""Ray for the jobs: the token of the user's clusters (token.py: light, read before Ray is
imported, since Ray reads its authentication mode once, at import), which Ray a job runs on
(connect.py), Ray's routine lines kept out of a job's output (quiet.py), whether the cluster can
hold a run (resources.py), a head of one's own on this machine (head.py) and submissions to a
head (submit.py)."""
