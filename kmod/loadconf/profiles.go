package loadconf

import (
	"fmt"
	"sort"
	"strings"
)

// Profile is a named set of module settings for one cloud or workload.
// Profiles returns them for documentation and listings; Render applies
// the ones Options.Profiles names.
type Profile struct {
	Name, Description string
	// Load lists the modules the profile loads at boot, in order.
	Load []string
	// Modprobe holds the profile's modprobe.d file (one, named
	// "kmodctl-<profile>"), if it has options or blacklists.
	Modprobe []ModprobeConf
	// Sysctl holds the settings of its /etc/sysctl.d file, if any.
	Sysctl map[string]string
	// Reasons has one line per setting saying why it is there and which
	// document it comes from. Settings that apply only under a condition
	// say so ("if ThirdPartyNIC: ...").
	Reasons []string
}

type settingKind int

const (
	setLoad settingKind = iota
	setOptions
	setBlacklist
	setSysctl
)

// setting is one line a profile contributes.
type setting struct {
	kind settingKind
	// key is the module name, or the sysctl key.
	key string
	// value is the options string or the sysctl value.
	value string
	// why says why, with its source, in a line.
	why string
	// thirdPartyNIC: only when Options.ThirdPartyNIC is set.
	thirdPartyNIC bool
}

type profileDef struct {
	name, description string
	settings          []setting
}

// The profiles, in the order Profiles lists them. Every reason names the
// document it comes from; the documents are the cloud vendors' own
// guides for bringing an image of one's own, and Kubernetes'
// node-setup pages.
var profileDefs = []profileDef{
	{
		name:        "aws",
		description: "Amazon EC2 Nitro instances: NVMe storage (EBS, instance store) and the Elastic Network Adapter",
		settings: []setting{
			// Amazon EBS User Guide, "Amazon EBS volumes and NVMe".
			{kind: setLoad, key: "nvme_core",
				why: "EBS volumes and instance store volumes are NVMe devices on Nitro instances; nvme_core comes first so its io_timeout option is in force before any controller is probed (Amazon EBS User Guide: Amazon EBS volumes and NVMe)"},
			{kind: setLoad, key: "nvme",
				why: "the NVMe PCI driver that binds the EBS and instance store controllers, loaded before ena so the disks are probed first; the root disk's driver must also be in the initramfs (Amazon EBS User Guide: Amazon EBS volumes and NVMe)"},
			// Amazon EC2 User Guide, "Enable enhanced networking with ENA".
			{kind: setLoad, key: "ena",
				why: "Elastic Network Adapter, the network interface of Nitro instances, which require its driver (Amazon EC2 User Guide: Enable enhanced networking with ENA)"},
			// Amazon EBS User Guide, "NVMe I/O operation timeout for
			// Amazon EBS volumes": the default is 30 s; AWS recommends
			// the highest value, 4294967295 on current kernels (255 on
			// old ones, where the parameter was a byte).
			{kind: setOptions, key: "nvme_core", value: "io_timeout=4294967295",
				why: "AWS recommends the highest NVMe I/O timeout, 4294967295 s on current kernels (255 on old ones), so slow EBS I/O is not failed after the 30 s default, which can remount a filesystem read-only; a modprobe.d option only reaches a modular nvme_core (a built-in one needs nvme_core.io_timeout= on the kernel command line) (Amazon EBS User Guide: NVMe I/O operation timeout for Amazon EBS volumes)"},
		},
	},
	{
		name:        "azure",
		description: "Microsoft Azure (Hyper-V): VMBus, its storage, network and integration-services drivers",
		settings: []setting{
			// Azure, "Prepare Linux for imaging in Azure" (create-upload-
			// generic) and "Troubleshoot Linux VM boot and network issues
			// due to Hyper-V driver errors".
			{kind: setLoad, key: "hv_vmbus",
				why: "the VMBus that every other Hyper-V device hangs off, so it comes first; Azure requires the Hyper-V drivers hv_vmbus, hv_storvsc and hv_netvsc in the initramfs (Azure: Prepare Linux for imaging in Azure)"},
			{kind: setLoad, key: "hv_storvsc",
				why: "the Hyper-V storage driver for the OS and data disks; without it the VM does not boot (Azure: Troubleshoot Linux VM boot and network issues due to Hyper-V driver errors)"},
			{kind: setLoad, key: "hv_netvsc",
				why: "the Hyper-V synthetic network driver; without it the VM has no network (Azure: Troubleshoot Linux VM boot and network issues due to Hyper-V driver errors)"},
			{kind: setLoad, key: "hv_utils",
				why: "Hyper-V integration services: the KVP exchange the Azure agent and hv_kvp_daemon use to report to the host, plus heartbeat, shutdown and time sync (Azure: Prepare Linux for imaging in Azure; Linux Integration Services)"},
		},
	},
	{
		name:        "gcp",
		description: "Google Compute Engine: gVNIC and VirtIO network, VirtIO SCSI and NVMe disks",
		settings: []setting{
			// Compute Engine, "Building a custom operating system":
			// hardware support requirements.
			{kind: setLoad, key: "gve",
				why: "Google Virtual NIC, required by third-generation machine series, Tau T2A and Tier_1 networking (Compute Engine: Building a custom operating system; Using Google Virtual NIC)"},
			{kind: setLoad, key: "virtio_net",
				why: "the VirtIO-Net adapter of the machine series that do not use gVNIC (Compute Engine: Building a custom operating system)"},
			{kind: setLoad, key: "virtio_scsi",
				why: "Persistent Disk is attached through VirtIO SCSI on the machine series that do not use NVMe (Compute Engine: Building a custom operating system)"},
			{kind: setLoad, key: "nvme",
				why: "Persistent Disk, Hyperdisk and Local SSD are NVMe devices on the machine series with the NVMe disk interface (third generation and later, Confidential VM); the root disk's driver must also be in the initramfs (Compute Engine: Building a custom operating system; Create custom Confidential VM images)"},
		},
	},
	{
		name:        "alibaba",
		description: "Alibaba Cloud ECS (KVM): VirtIO and NVMe drivers",
		settings: []setting{
			// Alibaba Cloud ECS, "Image check items" (GUESTOS.Virtio,
			// GUESTOS.Nvme) and "Install the virtio driver".
			{kind: setLoad, key: "virtio_pci",
				why: "ECS instances are KVM guests whose devices sit on VirtIO PCI; images without the virtio drivers fail to start (Alibaba Cloud ECS: Image check items, GUESTOS.Virtio; Install the virtio driver)"},
			{kind: setLoad, key: "virtio_blk",
				why: "the VirtIO block driver of the cloud disks; the root disk's driver must also be in the initramfs (Alibaba Cloud ECS: Install the virtio driver)"},
			{kind: setLoad, key: "virtio_net",
				why: "the VirtIO network driver of the ECS network interfaces (Alibaba Cloud ECS: Install the virtio driver)"},
			{kind: setLoad, key: "nvme",
				why: "instance families such as ecs.g7se and ecs.g8i attach their cloud disks over NVMe (Alibaba Cloud ECS: Image check items, GUESTOS.Nvme; NVMe protocol)"},
			// Not from an Alibaba document: the case this project was
			// asked to handle (an image carrying Amazon's ena, for
			// instance one migrated from EC2, that gets a third-party NIC
			// driver for ECS).
			{kind: setBlacklist, key: "ena", thirdPartyNIC: true,
				why: "a third-party NIC driver is installed: ena (Amazon's Elastic Network Adapter, PCI vendor 1d0f, which ECS does not present) is kept from being autoloaded by alias so only the third-party driver claims network devices; blacklisting does not stop an explicit modprobe ena (project requirement for images moved from EC2, not an Alibaba Cloud document)"},
		},
	},
	{
		name:        "generic",
		description: "any KVM/QEMU cloud: VirtIO block, SCSI and network, and NVMe",
		settings: []setting{
			// OASIS VIRTIO 1.x specification device types, as QEMU and
			// OpenStack present them.
			{kind: setLoad, key: "virtio_blk",
				why: "virtio-blk disks, the default disk of QEMU/KVM clouds such as OpenStack (OASIS VIRTIO specification: block device)"},
			{kind: setLoad, key: "virtio_net",
				why: "virtio-net network interfaces of QEMU/KVM clouds (OASIS VIRTIO specification: network device)"},
			{kind: setLoad, key: "virtio_scsi",
				why: "virtio-scsi disks, used where a cloud needs SCSI features (discard, many disks) (OASIS VIRTIO specification: SCSI host device)"},
			{kind: setLoad, key: "nvme",
				why: "NVMe disks, emulated or passed through by clouds that present NVMe storage (NVM Express base specification; QEMU nvme device)"},
		},
	},
	{
		name:        "kubernetes",
		description: "Kubernetes nodes: overlay filesystem, bridged traffic seen by iptables, IPv4 forwarding, kube-proxy IPVS mode",
		settings: []setting{
			// Kubernetes, "Container Runtimes": its earlier versions list
			// overlay, br_netfilter and the bridge sysctls; the current
			// page only requires ip_forward and defers the rest to the
			// network plugin's documentation.
			{kind: setLoad, key: "overlay",
				why: "overlayfs, the snapshotter of containerd and CRI-O (Kubernetes: Container Runtimes, prerequisites of its earlier versions)"},
			{kind: setLoad, key: "br_netfilter",
				why: "makes bridged pod traffic pass through iptables and creates the net.bridge.* sysctls, which systemd-sysctl (ordered after systemd-modules-load) can then set (Kubernetes: Container Runtimes, prerequisites of its earlier versions; Network Plugins)"},
			// kubernetes/kubernetes pkg/proxy/ipvs README: the IPVS
			// proxier needs ip_vs, its rr/wrr/sh schedulers and conntrack
			// (nf_conntrack_ipv4 before Linux 4.19).
			{kind: setLoad, key: "ip_vs",
				why: "IP Virtual Server, the kernel load balancer of kube-proxy's IPVS mode (kubernetes pkg/proxy/ipvs README: Prerequisite)"},
			{kind: setLoad, key: "ip_vs_rr",
				why: "IPVS round-robin scheduler, kube-proxy's default IPVS scheduler (kubernetes pkg/proxy/ipvs README: Prerequisite)"},
			{kind: setLoad, key: "ip_vs_wrr",
				why: "IPVS weighted round-robin scheduler (kubernetes pkg/proxy/ipvs README: Prerequisite)"},
			{kind: setLoad, key: "ip_vs_sh",
				why: "IPVS source-hashing scheduler (kubernetes pkg/proxy/ipvs README: Prerequisite)"},
			{kind: setLoad, key: "nf_conntrack",
				why: "connection tracking for IPVS NAT (nf_conntrack_ipv4 before Linux 4.19) (kubernetes pkg/proxy/ipvs README: Prerequisite)"},
			{kind: setSysctl, key: "net.bridge.bridge-nf-call-iptables", value: "1",
				why: "let iptables see bridged IPv4 traffic (Kubernetes: Container Runtimes, earlier versions; Network Plugins)"},
			{kind: setSysctl, key: "net.bridge.bridge-nf-call-ip6tables", value: "1",
				why: "let ip6tables see bridged IPv6 traffic (Kubernetes: Container Runtimes, earlier versions; Network Plugins)"},
			{kind: setSysctl, key: "net.ipv4.ip_forward", value: "1",
				why: "route IPv4 packets between interfaces, which pod networking needs and the kernel does not do by default (Kubernetes: Container Runtimes, Enable IPv4 packet forwarding)"},
		},
	},
}

// profileNames lists the valid profile names for error messages.
func profileNames() []string {
	names := make([]string, len(profileDefs))
	for i, p := range profileDefs {
		names[i] = p.name
	}
	return names
}

func findProfile(name string) (*profileDef, error) {
	for i := range profileDefs {
		if profileDefs[i].name == name {
			return &profileDefs[i], nil
		}
	}
	return nil, fmt.Errorf("unknown profile %q (valid: %s)", name, strings.Join(profileNames(), ", "))
}

// confName is the modprobe.d file name (without .conf) of a profile.
func (p *profileDef) confName() string { return "kmodctl-" + p.name }

// sysctlPath is the sysctl.d file of a profile.
func (p *profileDef) sysctlPath() string { return "/etc/sysctl.d/99-kmodctl-" + p.name + ".conf" }

// Profiles describes every profile, in a fixed order.
func Profiles() []Profile {
	out := make([]Profile, 0, len(profileDefs))
	for i := range profileDefs {
		d := &profileDefs[i]
		p := Profile{Name: d.name, Description: d.description}
		mc := ModprobeConf{Name: d.confName()}
		for _, s := range d.settings {
			what := ""
			switch s.kind {
			case setLoad:
				p.Load = append(p.Load, s.key)
				what = "load " + s.key
			case setOptions:
				if !s.thirdPartyNIC {
					if mc.Options == nil {
						mc.Options = map[string]string{}
					}
					mc.Options[s.key] = s.value
				}
				what = "options " + s.key + " " + s.value
			case setBlacklist:
				if !s.thirdPartyNIC {
					mc.Blacklist = append(mc.Blacklist, s.key)
				}
				what = "blacklist " + s.key
			case setSysctl:
				if p.Sysctl == nil {
					p.Sysctl = map[string]string{}
				}
				p.Sysctl[s.key] = s.value
				what = s.key + " = " + s.value
			}
			if s.thirdPartyNIC {
				what = "if ThirdPartyNIC: " + what
			}
			p.Reasons = append(p.Reasons, what+": "+s.why)
		}
		if len(mc.Options) > 0 || len(mc.Blacklist) > 0 {
			p.Modprobe = []ModprobeConf{mc}
		}
		out = append(out, p)
	}
	return out
}

// sortedKeys returns the keys of m in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
