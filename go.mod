module github.com/kmodctl/packer-plugin-kmod

go 1.26

require (
	github.com/klauspost/compress v1.18.0 // indirect
	github.com/ulikunitz/xz v0.5.15 // indirect
)
