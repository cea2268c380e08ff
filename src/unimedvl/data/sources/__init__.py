"""Source adapters: each turns one dataset layout into :class:`RawRecord` objects.

Adapters list cheap, picklable references first (`refs()`), then load one record per reference
(`load(ref)`), so a build can split work into chunks, run them in parallel and resume.
"""
