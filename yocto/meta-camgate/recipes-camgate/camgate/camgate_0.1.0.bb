SUMMARY = "camgate: camera gateway daemon"
DESCRIPTION = "Keeps Message Channel sessions with the site's cameras, stores their events in a \
durable on-disk outbox and forwards them to the configured sinks. Runs as a systemd service."
HOMEPAGE = "https://git.example.com/camgate"
SECTION = "net"
# Cargo.toml: license = "MIT OR Apache-2.0"; the sources carry no license file of their own.
LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Point CAMGATE_GIT_URI at the project's repository (e.g. in local.conf) and pin SRCREV to the
# released commit. For a local checkout: CAMGATE_GIT_URI = "git:///path/to/camgate;protocol=file"
CAMGATE_GIT_URI ??= "git://git.example.com/camgate.git;protocol=https"
SRC_URI = "${CAMGATE_GIT_URI};branch=main"
# The release commit (bump with the recipe; keep PV in the file name in step with Cargo.toml).
SRCREV ??= "4683f9d0083622049089e0be6d99852bd2c98f7b"
S = "${WORKDIR}/git"

# Upstream OE-core `cargo` class (poky/meta/classes*/cargo.bbclass), not meta-rust-bin's
# cargo_bin: it builds with OE's own Rust toolchain, offline (--frozen) from the crates listed
# in camgate-crates.inc. camgate needs Rust >= 1.85 (rust-version) and Cargo.lock v4
# (cargo >= 1.78): newer than kirkstone's and scarthgap's own Rust, so add a layer that provides
# one (see yocto/README.md).
inherit cargo systemd features_check

# camgate's cargo features (Cargo.toml [features]). A gateway that forwards only by MQTT can drop
# `kafka` (librdkafka + vendored OpenSSL, about 7 MB of the binary): e.g. in local.conf
# CAMGATE_FEATURES:pn-camgate = "vision mqtt". A config with a [kafka] section is then refused
# by `camgate check-config`, naming the missing feature.
CAMGATE_FEATURES ??= "vision kafka mqtt"
CARGO_BUILD_FLAGS:append = " --no-default-features --features ${@','.join(d.getVar('CAMGATE_FEATURES').split())}"
# rdkafka builds librdkafka (C, with a C++ compiler check) through cmake and vendors OpenSSL
# (openssl-src, needs perl): native tools only, no target libraries.
DEPENDS += "${@bb.utils.contains('CAMGATE_FEATURES', 'kafka', 'cmake-native perl-native', '', d)}"
# On scarthgap (and langdale+) OE-core also has cargo-update-recipe-crates, which provides
# `bitbake -c update_crates camgate` to regenerate camgate-crates.inc; kirkstone lacks it.
inherit ${@'cargo-update-recipe-crates' if bb.utils.which(d.getVar('BBPATH'), 'classes-recipe/cargo-update-recipe-crates.bbclass') else ''}

# crate://crates.io/<name>/<version> SRC_URIs + sha256sums, generated from Cargo.lock.
# `include`, not `require`: a missing file fails this recipe's fetch/compile, not every parse.
include ${BPN}-crates.inc

# Build the size-optimised profile the gateway image uses (Cargo.toml [profile.min-size]).
BUILD_MODE = "--profile min-size"
BUILD_DIR = "min-size"
CARGO_TARGET_SUBDIR = "${RUST_HOST_SYS}/${BUILD_DIR}"
# Let OE strip (and split debug info) instead of cargo, so no already-stripped QA warning.
export CARGO_PROFILE_MIN_SIZE_STRIP = "false"

# cargo_do_install installs target/<triple>/min-size/camgate to ${bindir}.
do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/camgate.service ${D}${systemd_system_unitdir}/camgate.service

    install -d -m 0755 ${D}${sysconfdir}/camgate
    install -m 0644 ${S}/systemd/camgate.toml ${D}${sysconfdir}/camgate/camgate.toml

    # Vision models, read-only at run time.
    install -d ${D}${datadir}/camgate/models
    if [ -d ${S}/models ]; then
        cp -R --no-dereference --preserve=mode,links ${S}/models/. ${D}${datadir}/camgate/models/
        chown -R root:root ${D}${datadir}/camgate/models
    fi

    install -d ${D}${docdir}/camgate
    install -m 0644 ${S}/systemd/README.md ${D}${docdir}/camgate/README.md
}

SYSTEMD_SERVICE:${PN} = "camgate.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# The example config is a conffile: an OTA package upgrade keeps the site's edits.
CONFFILES:${PN} = "${sysconfdir}/camgate/camgate.toml"
FILES:${PN} += "${datadir}/camgate"

# The unit uses DynamicUser=, LoadCredential= and other systemd >= 247 features.
RDEPENDS:${PN} += "systemd"
REQUIRED_DISTRO_FEATURES = "systemd"
