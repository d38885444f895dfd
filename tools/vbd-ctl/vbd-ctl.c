/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl: drive vbdd daemons through their control sockets; spawn them.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "vbd-ctl.h"
#include "vbd/macro.h"

/* clang-format off */
static const struct vbdctl_verb *const verbs[] = {
    &vbdctl_verb_list,
    &vbdctl_verb_info,
    &vbdctl_verb_stats,
    &vbdctl_verb_pause,
    &vbdctl_verb_resume,
    &vbdctl_verb_reopen,
    &vbdctl_verb_detach,
    &vbdctl_verb_migrate,
    &vbdctl_verb_checkpoint,
    &vbdctl_verb_backup,
    &vbdctl_verb_restore,
    &vbdctl_verb_snapshot,
    &vbdctl_verb_layer,
    &vbdctl_verb_mount,
    &vbdctl_verb_umount,
    &vbdctl_verb_log_level,
    &vbdctl_verb_spawn,
    &vbdctl_verb_attach,
    &vbdctl_verb_watch,
    &vbdctl_verb_version,
    NULL,
};
/* clang-format on */

static void usage(FILE *f)
{
        fprintf(f, "Usage: vbd-ctl [--ctl-dir DIR] [--config FILE] [--json] VERB [OPTIONS]\n"
                   "Control vbdd, the userspace Xen block backend.\n"
                   "\n"
                   "Verbs:\n");
        for (unsigned i = 0; verbs[i]; i++)
                fprintf(f, "  %-10s %s\n", verbs[i]->name, verbs[i]->summary);
        fprintf(f, "\n"
                   "Options of every verb:\n"
                   "  -d, --domid D     the guest domain of the VBD\n"
                   "  -n, --devid N     its virtual device number (51712 = xvda)\n"
                   "  -j, --json        machine-readable output (errors too, on stdout)\n"
                   "  -t, --timeout S   seconds to wait for an answer\n"
                   "      --ctl-dir DIR where the control sockets are (default: $VBD_RUNTIME_DIR,\n"
                   "                    else runtime-dir in " VBD_CONFIG_PATH
                   ", else " VBD_RUNTIME_DIR_DEFAULT ")\n"
                   "\n"
                   "Exit codes: 0 ok, 1 command failed, 2 usage, 3 no such daemon, 4 permission\n"
                   "denied, 5 timeout, 6 connection or protocol error.\n"
                   "'vbd-ctl VERB --help' shows a verb's options; see vbd-ctl(8).\n");
}

const char *vbdctl_name(uint32_t domid, uint32_t devid)
{
        static char buf[32];

        snprintf(buf, sizeof(buf), "%u/%u", (unsigned)domid, (unsigned)devid);
        return buf;
}

int vbdctl_usage_error(struct vbdctl *o, const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "vbd-ctl%s%s: ", o->verb ? " " : "", o->verb ? o->verb : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, " (see --help)\n");
        return VBDCTL_EXIT_USAGE;
}

int vbdctl_fail(struct vbdctl *o, int code, bool daemon, const char *fmt, ...)
{
        char msg[768];
        va_list ap;
        int e = code < 0 ? -code : code, ex;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (daemon)
                ex = e == EPERM || e == EACCES ? VBDCTL_EXIT_PERM : VBDCTL_EXIT_FAILED;
        else
                ex = vbdctl_exit_code(code);
        fprintf(stderr, "vbd-ctl %s: %s\n", o->verb ? o->verb : "", msg);
        if (o->json) {
                const char *name = e ? strerrorname_np(e) : NULL;

                vbdctl_print_json(json_pack("{s:b,s:{s:i,s:s,s:s,s:i}}", "ok", 0, "error", "errno",
                                            e, "code", name ? name : "EIO", "message", msg, "exit",
                                            ex));
        }
        return ex;
}

void vbdctl_print_json(json_t *j)
{
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        fflush(stdout);
        json_decref(j);
}

long long vbdctl_jint(json_t *obj, const char *key)
{
        return (long long)json_integer_value(json_object_get(obj, key));
}

const char *vbdctl_jstr(json_t *obj, const char *key)
{
        const char *s = json_string_value(json_object_get(obj, key));

        return s ? s : "-";
}

int vbdctl_timeout(struct vbdctl *o, int def_ms)
{
        return o->timeout_ms >= 0 ? o->timeout_ms : def_ms;
}

int vbdctl_need_vbd(struct vbdctl *o)
{
        if (!o->have_domid || !o->have_devid)
                return vbdctl_usage_error(o, "--domid and --devid are required");
        return 0;
}

int vbdctl_call_vbd(struct vbdctl *o, const char *cmd, json_t *args, int timeout_ms,
                    json_t **ret_result)
{
        char path[256];
        struct vbd_err err = {0};
        int r;

        if (vbdctl_socket_path(o->dir, o->domid, o->devid, path, sizeof(path)) < 0) {
                json_decref(args);
                return vbdctl_fail(o, -ENAMETOOLONG, false, "--ctl-dir is too long");
        }
        r = vbdctl_call(path, cmd, args, timeout_ms, ret_result, &err);
        if (r == 0)
                return 0;
        return vbdctl_fail(o, err.code, r == 1, "%s: %s", vbdctl_name(o->domid, o->devid), err.msg);
}

enum { OPT_CTL_DIR = 0x1000, OPT_CONFIG };

int vbdctl_parse(struct vbdctl *o, int argc, char **argv, const struct option *extra,
                 int (*handle)(struct vbdctl *o, int c, const char *arg, void *data), void *data)
{
        static const struct option common[] = {
            {"domid", required_argument, NULL, 'd'},
            {"devid", required_argument, NULL, 'n'},
            {"json", no_argument, NULL, 'j'},
            {"timeout", required_argument, NULL, 't'},
            {"ctl-dir", required_argument, NULL, OPT_CTL_DIR},
            {"help", no_argument, NULL, 'h'},
        };
        struct option all[64];
        size_t n = 0;
        int c;

        memcpy(all, common, sizeof(common));
        n = VBD_ARRAY_SIZE(common);
        for (const struct option *e = extra; e && e->name && n < 63; e++)
                all[n++] = *e;
        memset(&all[n], 0, sizeof(all[n]));
        optind = 1;
        while ((c = getopt_long(argc, argv, "d:n:jt:h", all, NULL)) != -1) {
                uint32_t t;
                int r;

                switch (c) {
                case 'd':
                        if (vbd_parse_u32(optarg, 0x7fef, &o->domid) < 0)
                                return vbdctl_usage_error(o, "bad --domid '%s'", optarg);
                        o->have_domid = true;
                        break;
                case 'n':
                        if (vbd_parse_u32(optarg, UINT32_MAX, &o->devid) < 0)
                                return vbdctl_usage_error(o, "bad --devid '%s'", optarg);
                        o->have_devid = true;
                        break;
                case 'j':
                        o->json = true;
                        break;
                case 't':
                        if (vbd_parse_u32(optarg, 86400, &t) < 0)
                                return vbdctl_usage_error(o, "bad --timeout '%s'", optarg);
                        o->timeout_ms = (int)t * 1000;
                        break;
                case OPT_CTL_DIR:
                        snprintf(o->dir, sizeof(o->dir), "%s", optarg);
                        break;
                case 'h':
                        for (unsigned i = 0; verbs[i]; i++)
                                if (strcmp(verbs[i]->name, o->verb) == 0)
                                        printf("Usage: vbd-ctl %s %s\n%s\n"
                                               "Common options: -d D -n N, --json, --timeout S, "
                                               "--ctl-dir DIR (see vbd-ctl --help).\n",
                                               o->verb, verbs[i]->args, verbs[i]->summary);
                        return -1;
                case '?':
                        return VBDCTL_EXIT_USAGE;
                default:
                        if (!handle)
                                return VBDCTL_EXIT_USAGE;
                        r = handle(o, c, optarg, data);
                        if (r)
                                return r;
                }
        }
        if (optind != argc)
                return vbdctl_usage_error(o, "unexpected argument '%s'", argv[optind]);
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
            {"ctl-dir", required_argument, NULL, OPT_CTL_DIR},
            {"config", required_argument, NULL, OPT_CONFIG},
            {"json", no_argument, NULL, 'j'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        struct vbdctl o = {.timeout_ms = -1};
        const char *dir = NULL, *env;
        struct vbd_err err = {0};
        bool json = false;
        int c, r;

        while ((c = getopt_long(argc, argv, "+jhV", opts, NULL)) != -1) {
                switch (c) {
                case OPT_CTL_DIR:
                        dir = optarg;
                        break;
                case OPT_CONFIG:
                        o.config_path = optarg;
                        break;
                case 'j':
                        json = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("vbd-ctl %s (protocol 1)\n", VBD_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return VBDCTL_EXIT_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return VBDCTL_EXIT_USAGE;
        }
        vbd_config_init(&o.conf);
        if (vbd_config_load(&o.conf, o.config_path ? o.config_path : VBD_CONFIG_PATH,
                            o.config_path != NULL, &err) < 0) {
                fprintf(stderr, "vbd-ctl: config: %s\n", err.msg);
                return VBDCTL_EXIT_USAGE;
        }
        env = getenv("VBD_RUNTIME_DIR");
        snprintf(o.dir, sizeof(o.dir), "%s", dir ? dir : env && *env ? env : o.conf.runtime_dir);
        o.json = json;
        o.verb = argv[optind];
        for (unsigned i = 0; verbs[i]; i++) {
                if (strcmp(verbs[i]->name, o.verb) == 0) {
                        argv[optind] = argv[0];
                        r = verbs[i]->run(&o, argc - optind, argv + optind);
                        return r < 0 ? 0 : r;
                }
        }
        fprintf(stderr, "vbd-ctl: unknown verb '%s' (see --help)\n", o.verb);
        return VBDCTL_EXIT_USAGE;
}
