"""Test harness: private dockerd, busybox test image, fake NVIDIA hook and Unix test users."""

from tests.harness.dockerd import (
    PrivateDockerd,
    docker,
    docker_binary,
    remove_plugin_spec,
    write_plugin_spec,
)
from tests.harness.fake_nvidia_hook import (
    FAKE_HOOK_RECORD_ENV,
    HOOK_NAME,
    default_record_path,
    install_fake_hook,
    read_hook_records,
)
from tests.harness.images import BUSYBOX_TAG, build_busybox_rootfs, import_busybox_image
from tests.harness.users import ensure_group, ensure_user, remove_group, remove_user

__all__ = [
    "BUSYBOX_TAG",
    "FAKE_HOOK_RECORD_ENV",
    "HOOK_NAME",
    "PrivateDockerd",
    "build_busybox_rootfs",
    "default_record_path",
    "docker",
    "docker_binary",
    "ensure_group",
    "ensure_user",
    "import_busybox_image",
    "install_fake_hook",
    "read_hook_records",
    "remove_group",
    "remove_plugin_spec",
    "remove_user",
    "write_plugin_spec",
]
