"""The host's kernel and hardware: cgroups, NVML, DCGM job-mapping files."""
