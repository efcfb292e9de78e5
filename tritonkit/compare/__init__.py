"""`tritonkit compare`: one build served by several delivery methods, measured the same way.

pinning: the same engine arguments under every method; methods: which runtime and protocol each
method is; run: start, measure, stop each method in turn (results kept per method); table and
plot: the comparison; capacity: replicas and monthly cost for a target load; seed: the published
numbers of the study tritonkit grew from.
"""
