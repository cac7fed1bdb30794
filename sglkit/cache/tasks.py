"""invoke cache.*"""

from invoke import Collection

from sglkit.cache.triton import triton

ns = Collection("cache", triton)
