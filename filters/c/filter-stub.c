static int on_connect(uint64_t id, struct filter_connect *conn)
{ log_warnx("filter-stub: OHAI, SOMEONE CONNECTED !"); return (1); }
int main(int argc, char **argv) {
    int ch; log_init(-1);
    while ((ch = getopt(argc, argv, "")) != -1) { switch (ch) { default:
        log_warnx("warn: filter-stub: bad option"); return (1); } }
    argc -= optind; argv += optind;
    filter_api_on_connect(on_connect);
    filter_api_loop();
    log_warnx("warn: filter-stub: exiting"); return (1);
}
