# The three images of the operators' plan: the bootstrap server (Groundwork itself), cluster
# nodes and workers (the node agent). Each starts from the same Debian 12 base image, boots it
# under QEMU, runs the shared provisioners, and writes a raw image with its sha256, which a
# Profile names.
#
#   packer build -only=qemu.bootstrap-server packer/
#   packer build -only=qemu.cluster-node packer/
#   packer build -only=qemu.worker packer/

source "qemu" "bootstrap-server" {
  iso_url              = var.base_image
  iso_checksum         = var.base_image_checksum
  disk_image           = true
  format               = "raw"
  accelerator          = "tcg"
  headless             = true
  skip_resize_disk     = true
  cpus                 = var.cpus
  memory               = var.memory
  net_device           = "virtio-net"
  disk_interface       = "virtio"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = local.ssh_timeout
  shutdown_command     = "poweroff"
  output_directory     = "${var.output_dir}/bootstrap-server"
  vm_name              = "groundwork-bootstrap-server.raw"
}

source "qemu" "cluster-node" {
  iso_url              = var.base_image
  iso_checksum         = var.base_image_checksum
  disk_image           = true
  format               = "raw"
  accelerator          = "tcg"
  headless             = true
  skip_resize_disk     = true
  cpus                 = var.cpus
  memory               = var.memory
  net_device           = "virtio-net"
  disk_interface       = "virtio"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = local.ssh_timeout
  shutdown_command     = "poweroff"
  output_directory     = "${var.output_dir}/cluster-node"
  vm_name              = "groundwork-cluster-node.raw"
}

source "qemu" "worker" {
  iso_url              = var.base_image
  iso_checksum         = var.base_image_checksum
  disk_image           = true
  format               = "raw"
  accelerator          = "tcg"
  headless             = true
  skip_resize_disk     = true
  cpus                 = var.cpus
  memory               = var.memory
  net_device           = "virtio-net"
  disk_interface       = "virtio"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = local.ssh_timeout
  shutdown_command     = "poweroff"
  output_directory     = "${var.output_dir}/worker"
  vm_name              = "groundwork-worker.raw"
}

build {
  sources = [
    "source.qemu.bootstrap-server",
    "source.qemu.cluster-node",
    "source.qemu.worker",
  ]

  # Every image: the binary, and the node agent as a systemd unit.
  provisioner "file" {
    source      = var.groundwork_binary
    destination = "/usr/local/bin/groundwork"
  }
  provisioner "shell" {
    scripts = ["${path.root}/scripts/common.sh", "${path.root}/scripts/node-agent.sh"]
  }

  # The bootstrap server also runs `groundwork server`, installed by the same Ansible role
  # that sets up a server on any Debian 12 host (deploy/ansible). Nothing host-specific goes
  # into the image: /etc/groundwork/server.env (first member or join) comes at first boot,
  # from cloud-init's write_files or the role run again with groundwork_start=true.
  provisioner "ansible" {
    only             = ["qemu.bootstrap-server"]
    playbook_file    = "${path.root}/../deploy/ansible/site.yml"
    user             = "root"
    groups           = ["groundwork"]
    use_proxy        = false
    extra_arguments  = ["--extra-vars", "groundwork_binary_src=${var.groundwork_binary} groundwork_start=false"]
    ansible_env_vars = ["ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=1"]
  }

  # The layers' packages, per image (none by default: the node agent installs what a
  # ServiceInstance names at converge time).
  provisioner "shell" {
    only             = ["qemu.cluster-node"]
    script           = "${path.root}/scripts/packages.sh"
    environment_vars = ["PACKAGES=${join(" ", var.cluster_node_packages)}"]
  }
  provisioner "shell" {
    only             = ["qemu.worker"]
    script           = "${path.root}/scripts/packages.sh"
    environment_vars = ["PACKAGES=${join(" ", var.worker_packages)}"]
  }

  # Last: the build key goes, the machine identity is reset for the first boot.
  provisioner "shell" {
    script = "${path.root}/scripts/seal.sh"
  }

  post-processor "checksum" {
    checksum_types = ["sha256"]
    output         = "${var.output_dir}/{{.BuildName}}/groundwork-{{.BuildName}}.raw.sha256"
  }
}
