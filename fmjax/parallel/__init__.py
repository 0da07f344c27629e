"""Running the core's steps over devices: jit over a Mesh or pmap, FSDP shardings, several processes."""
