# Variables shared by the three images (Packer 1.6.6's HCL2 subset: no `packer {}` plugin
# block, no data sources, no templatefile(), so newer Packer reads these files too).

variable "base_image" {
  type        = string
  description = "The Debian 12 base image (raw, GPT, BIOS and UEFI), built by packer/base-image.sh."
  default     = "file:///var/tmp/groundwork-images/debian-12-base.raw"
}

variable "base_image_checksum" {
  type        = string
  description = "sha256:HEX of the base image (base-image.sh writes it next to the image)."
  default     = "none"
}

variable "groundwork_binary" {
  type        = string
  description = "The groundwork binary to put in the images (server and node agent are one binary)."
  default     = "../target/release/groundwork"
}

variable "ssh_private_key_file" {
  type        = string
  description = "The key base-image.sh authorised for root, for the build only (the provisioners remove it)."
  default     = "/var/tmp/groundwork-images/build-key"
}

variable "output_dir" {
  type    = string
  default = "/var/tmp/groundwork-images/out"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 1024
}

variable "cluster_node_packages" {
  type        = list(string)
  description = "Debian packages baked into the cluster-node image for the layers its Profiles run (e.g. mariadb-server, galera-4, haproxy, slapd), so machines do not fetch them at converge time. Needs the Debian archive from the build VM."
  default     = []
}

variable "worker_packages" {
  type        = list(string)
  description = "Debian packages baked into the worker image."
  default     = []
}

locals {
  # The qemu builder settings every image shares. `accelerator = "tcg"`: /dev/kvm may exist
  # and hang guests on machines like the CI's (docs/images.md).
  ssh_timeout = "20m"
}
