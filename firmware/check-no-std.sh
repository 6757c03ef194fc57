#!/usr/bin/env bash
# Proves the firmware crates (ioc-wire, ioc-node) are no_std and heap-free:
#  1. `#![no_std]` at each crate root, no `std` feature, no `extern crate std/alloc`, no `std::`/`alloc::` paths;
#  2. no dependency of theirs has its `std` or `alloc` feature enabled (cargo tree, normal deps only);
#  3. they build, and `firmware/no-std-check` (a #![no_std] crate with its own #[panic_handler],
#     which rustc rejects as a duplicate lang item if anything in the graph links std) compiles
#     against them; and, when a bare-metal target is installed, they build for it.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in wire node; do
  root="firmware/$crate/src/lib.rs"
  if ! grep -q '^#!\[no_std\]' "$root"; then echo "FAIL: $root lacks #![no_std]"; fail=1; fi
  if grep -rnE 'extern crate (std|alloc)|\bstd::|\balloc::|cfg_attr\(.*no_std' "firmware/$crate/src"; then
    echo "FAIL: std/alloc used in firmware/$crate/src"; fail=1
  fi
  if grep -nE '^\s*(std|alloc)\s*=' "firmware/$crate/Cargo.toml"; then
    echo "FAIL: firmware/$crate/Cargo.toml declares a std/alloc feature"; fail=1
  fi
done
for pkg in ioc-wire ioc-node; do
  if cargo tree -q -p "$pkg" -e normal -e features -e no-proc-macro | grep -E 'feature "(std|alloc|use_std)"'; then
    echo "FAIL: a dependency of $pkg has std/alloc enabled"; fail=1
  fi
done
cargo build -q -p ioc-wire -p ioc-node
if ! CARGO_TARGET_DIR="$PWD/target/no-std-check" cargo check -q --manifest-path firmware/no-std-check/Cargo.toml; then
  echo "FAIL: firmware/no-std-check does not compile: something links std"; fail=1
fi
for target in thumbv7em-none-eabihf thumbv6m-none-eabi riscv32imc-unknown-none-elf x86_64-unknown-none; do
  if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "building for $target"
    cargo build -q -p ioc-wire -p ioc-node --target "$target"
  fi
done
if [ "$fail" -ne 0 ]; then echo "no_std check FAILED"; exit 1; fi
echo "no_std check passed: ioc-wire, ioc-node are #![no_std], use no std/alloc, and no dependency enables std/alloc"
