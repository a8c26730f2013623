"""The descriptor pool hfmesh's generated messages live in (see scripts/gen_proto.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
